"""KV-cache baselines with the same API: StreamingLLM and SnapKV (every KV head of every layer).

* StreamingLLM (Xiao et al.): attention sinks + recent window, ``sinks + window`` tokens per head.
  Here the window also applies in prefill, the streaming setting it was designed for.
* SnapKV (Li et al.): full prefill, then each KV head keeps its observation window (last ``w`` tokens)
  plus the ``budget - w`` prefix tokens with the largest max-pooled attention from that window.
"""

from __future__ import annotations

from torch import nn

from kvcompress.adapters import ModelShape
from kvcompress.layout import KVPolicy, SnapKVPolicy, WindowKV
from kvcompress.methods.kv_policy import KVPolicyMethod, all_kv_heads


class StreamingLLM(KVPolicyMethod):
    """Every KV head keeps ``sinks`` + the last ``window`` tokens."""

    name = "streaming_llm"

    def __init__(self, sinks: int = 4, window: int = 252):
        self.policy = WindowKV(sinks, window)

    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        return dict.fromkeys(all_kv_heads(shape), self.policy)


class SnapKV(KVPolicyMethod):
    """Every KV head is compressed to ``budget`` tokens after prefill."""

    name = "snapkv"

    def __init__(self, budget: int = 256, observation_window: int = 32, pool_kernel: int = 7):
        self.policy = SnapKVPolicy(budget, observation_window, pool_kernel)

    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        return dict.fromkeys(all_kv_heads(shape), self.policy)

"""``PositionalHeadOptimizer``: positional KV groups keep only sinks + a small recent window.

The windowed KV heads are stored apart from the full ones in
:class:`~kvcompress.cache.CompressedKVCache`, so a layer with ``n_w`` of ``n`` KV heads windowed holds
``(n - n_w)·T + n_w·(sinks + window)`` tokens of KV (a ring buffer) instead of ``n·T``. In prefill (and without
cache) the windowed heads attend to ``j < sinks`` or ``i - j < window`` only, so perplexity measures
exactly what decoding will see. On GQA models a KV group is windowed only if all its query heads are
positional (``HeadClassification.windowable_kv_groups``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from kvcompress.adapters import ModelShape
from kvcompress.classification import HeadClassification, validate_heads
from kvcompress.layout import KVPolicy, WindowKV
from kvcompress.methods.kv_policy import KVPolicyMethod


class PositionalHeadOptimizer(KVPolicyMethod):
    """Window the given ``(layer, kv_head)`` groups (or a classification's windowable groups)."""

    name = "positional"

    def __init__(self, kv_groups: Iterable[tuple[int, int]] | HeadClassification, sinks: int = 4,
                 window: int = 64):
        self.classification = kv_groups if isinstance(kv_groups, HeadClassification) else None
        self.kv_groups = self.classification.windowable_kv_groups() if self.classification else list(kv_groups)
        self.policy = WindowKV(sinks, window)

    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        if self.classification is not None:
            self.classification.check_model(model)
        return dict.fromkeys(validate_heads(shape, self.kv_groups, kind="kv"), self.policy)

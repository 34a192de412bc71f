"""Attention-head specialization for decoder LMs (Llama-family GQA and GPT-NeoX / Pythia).

Analysis (per-head statistics, classification), dead-head removal, windowed KV for positional heads,
StreamingLLM / SnapKV baselines and a benchmark; see ``docs/kvcompress.md``.
"""

from kvcompress.cache import CompressedKVCache, kv_cache_bytes
from kvcompress.classification import HeadClassification
from kvcompress.methods.base import ComposedMethod, CompressionMethod, MethodHandle
from kvcompress.methods.baselines import SnapKV, StreamingLLM
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer

__all__ = [
    "ComposedMethod",
    "CompressedKVCache",
    "CompressionMethod",
    "DeadHeadPruner",
    "HeadClassification",
    "MethodHandle",
    "PositionalHeadOptimizer",
    "SnapKV",
    "StreamingLLM",
    "kv_cache_bytes",
]

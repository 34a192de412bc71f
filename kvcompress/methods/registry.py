"""One registry of methods by name (CLI, benchmark, tests); an unknown name lists the valid ones.

Budget-matched baselines: for a context of ``T`` tokens and a KV fraction ``f`` (KV kept / full KV),
StreamingLLM holds ``sinks + window = f·T`` tokens per head (its ring buffer) and SnapKV keeps
``budget = f·T`` tokens per head. ``positional+dead+snapkv_gathering`` keeps ``budget = f_g·T`` tokens per
gathering KV group (``f_g``: ``MethodSettings.gathering_fraction``) on top of the windows and removed heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kvcompress.adapters import ModelShape
from kvcompress.classification import HeadClassification
from kvcompress.layout import FullKV, KVPolicy
from kvcompress.methods.base import ComposedMethod, CompressionMethod, MethodHandle
from kvcompress.methods.baselines import SnapKV, StreamingLLM
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.gathering import GatheringSnapKV, gathering_kv_groups
from kvcompress.methods.kv_policy import KVPolicyMethod, all_kv_heads
from kvcompress.methods.positional import PositionalHeadOptimizer


class NoCompression(CompressionMethod):
    """The unmodified model (SDPA, ``DynamicCache``)."""

    name = "full"

    def apply(self, model: nn.Module) -> MethodHandle:
        return MethodHandle(model, [], compressed_cache=False)


class FullOnCompressedCache(KVPolicyMethod):
    """The unmodified model run through the ``kvcompress`` attention and
    :class:`~kvcompress.cache.CompressedKVCache`, every KV head :class:`~kvcompress.layout.FullKV`.

    Same function as :class:`NoCompression` (same greedy tokens); the control that splits a method's speed-up
    over stock ``full`` into the cache layout's share (``full`` vs ``full_kvcompress``: growing buffers, our
    attention function) and head specialization's (``full_kvcompress`` vs the method).
    """

    name = "full_kvcompress"

    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        return dict.fromkeys(all_kv_heads(shape), FullKV())


@dataclass(frozen=True)
class MethodSettings:
    """What a method may need: a classification, window geometry, a context length and KV fraction (and, for
    ``positional+dead+snapkv_gathering``, the fraction of the context each gathering KV group keeps)."""

    classification: HeadClassification | None = None
    sinks: int = 4
    window: int = 64
    context_length: int = 1024
    kv_fraction: float = 0.5
    snapkv_observation_window: int = 32
    gathering_fraction: float = 0.5

    def budget_tokens(self) -> int:
        return max(self.sinks + 1, round(self.kv_fraction * self.context_length))

    def gathering_budget_tokens(self) -> int:
        """SnapKV budget of a gathering KV group: ``gathering_fraction`` of the context, at least the observation
        window."""
        return max(self.snapkv_observation_window, round(self.gathering_fraction * self.context_length))

    def require_classification(self, name: str) -> HeadClassification:
        if self.classification is None:
            raise ValueError(f"method {name!r} needs a head classification (--classification)")
        return self.classification


def _dead(settings: MethodSettings) -> CompressionMethod:
    return DeadHeadPruner(settings.require_classification("dead"))


def _positional(settings: MethodSettings) -> CompressionMethod:
    return PositionalHeadOptimizer(settings.require_classification("positional"), settings.sinks, settings.window)


def _gathering(settings: MethodSettings) -> CompressionMethod:
    return GatheringSnapKV(settings.require_classification("snapkv_gathering"), settings.gathering_budget_tokens(),
                           settings.snapkv_observation_window)


METHODS: dict[str, Callable[[MethodSettings], CompressionMethod]] = {
    "full": lambda settings: NoCompression(),
    "full_kvcompress": lambda settings: FullOnCompressedCache(),
    "dead": _dead,
    "dead_zero": lambda settings: DeadHeadPruner(settings.require_classification("dead_zero"), mode="zero"),
    "positional": _positional,
    "positional+dead": lambda settings: ComposedMethod([_dead(settings), _positional(settings)]),
    "positional+dead+snapkv_gathering": lambda settings: ComposedMethod(
        [_dead(settings), _positional(settings), _gathering(settings)]),
    "streaming_llm": lambda settings: StreamingLLM(settings.sinks, settings.budget_tokens() - settings.sinks),
    "snapkv": lambda settings: SnapKV(max(settings.budget_tokens(), settings.snapkv_observation_window),
                                      settings.snapkv_observation_window),
}

BASELINES = ("streaming_llm", "snapkv")  # methods that take a KV budget instead of a classification


def build_method(name: str, settings: MethodSettings) -> CompressionMethod:
    """Instantiate a registered method."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    return METHODS[name](settings)


def kv_fraction(classification: HeadClassification, context_length: int, sinks: int, window: int,
                with_dead: bool = True, gathering_budget: int | None = None) -> float:
    """KV kept / full KV at ``context_length`` when windowing (and removing) per ``classification``.

    ``f = Σ_groups kept_g / (G·T)`` with ``kept = T`` (full), ``sinks + window`` (windowed: the ring buffer), 0
    (KV group whose query heads are all dead) or, given a ``gathering_budget`` (SnapKV on the gathering groups),
    ``min(budget, T)`` for the groups with a gathering head.
    """
    shape = classification.shape
    groups = shape.num_layers * shape.num_kv_heads
    windowed = len(classification.windowable_kv_groups())
    removed = len(classification.kv_groups_where({"dead"}, {"dead"})) if with_dead else 0
    retained = min(sinks + window, context_length)
    full = groups - windowed - removed
    gathering = 0 if gathering_budget is None else len(gathering_kv_groups(classification))
    kept = (full - gathering) * context_length + gathering * min(gathering_budget or 0, context_length) \
        + windowed * retained
    return kept / (groups * context_length)

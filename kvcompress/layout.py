"""Per-layer head layout: which heads exist and how each KV head's cache is retained.

A :class:`HeadLayout` is attached to an attention module (attribute ``kvcompress_layout``) by the
methods in :mod:`kvcompress.methods`; the ``kvcompress`` attention function and
:class:`~kvcompress.cache.CompressedKVCache` read it. Head ids in a layout are *original* ids, so
methods compose (remove dead heads, then window positional heads) without renumbering.

KV retention policies (per KV head):

* :class:`FullKV` - keep every token.
* :class:`WindowKV` - keep the first ``sinks`` tokens and the last ``window`` tokens; a query at
  position ``i`` attends to key ``j`` iff ``j <= i`` and (``j < sinks`` or ``i - j < window``), in
  prefill as well as in decoding (StreamingLLM / DuoAttention streaming heads).
* :class:`SnapKVPolicy` - full attention in prefill, then keep ``budget`` tokens per head: the last
  ``observation_window`` tokens plus the prefix tokens with the largest pooled attention from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from kvcompress.adapters import ArchitectureAdapter

LAYOUT_ATTRIBUTE = "kvcompress_layout"


@dataclass(frozen=True)
class FullKV:
    """Keep every cached token."""


@dataclass(frozen=True)
class WindowKV:
    """Keep ``sinks`` first tokens plus the ``window`` most recent ones."""

    sinks: int
    window: int

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1:
            raise ValueError(f"WindowKV needs sinks >= 0 and window >= 1, got {self.sinks}, {self.window}")


@dataclass(frozen=True)
class SnapKVPolicy:
    """Compress once after prefill to ``budget`` tokens per head (SnapKV)."""

    budget: int
    observation_window: int = 32
    pool_kernel: int = 7

    def __post_init__(self) -> None:
        if self.budget < self.observation_window or self.observation_window < 1 or self.pool_kernel % 2 == 0:
            raise ValueError("SnapKV needs budget >= observation_window >= 1 and an odd pool kernel")


KVPolicy = FullKV | WindowKV | SnapKVPolicy


@dataclass(frozen=True)
class HeadLayout:
    """Heads present in one attention layer and the KV policy of each present KV head.

    ``query_heads[i]`` is the original id of the i-th query head in the (possibly sliced) weights,
    ``kv_heads[k]`` likewise for KV heads, ``query_to_kv[i]`` the *index* into ``kv_heads`` that query
    head ``i`` reads, and ``kv_policies[k]`` the retention policy of KV head ``k``.
    """

    query_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    query_to_kv: tuple[int, ...]
    kv_policies: tuple[KVPolicy, ...]

    @classmethod
    def dense(cls, num_query_heads: int, num_kv_heads: int) -> HeadLayout:
        """Unmodified layout: query head ``h`` reads KV head ``h // (H_q / H_kv)``, all full."""
        group = num_query_heads // num_kv_heads
        return cls(tuple(range(num_query_heads)), tuple(range(num_kv_heads)),
                   tuple(h // group for h in range(num_query_heads)), (FullKV(),) * num_kv_heads)

    def with_policies(self, policies: dict[int, KVPolicy]) -> HeadLayout:
        """Copy with the policy of some *original* KV head ids replaced (ids not present are ignored)."""
        new = tuple(policies.get(kv, old) for kv, old in zip(self.kv_heads, self.kv_policies, strict=True))
        return replace(self, kv_policies=new)

    def keeping(self, query_heads: set[int], kv_heads: set[int]) -> HeadLayout:
        """Copy restricted to the given original query / KV head ids."""
        kv_keep = [k for k, kv in enumerate(self.kv_heads) if kv in kv_heads]
        kv_new_index = {k: i for i, k in enumerate(kv_keep)}
        q_keep = [i for i, q in enumerate(self.query_heads) if q in query_heads]
        missing = [self.query_heads[i] for i in q_keep if self.query_to_kv[i] not in kv_new_index]
        if missing:
            raise ValueError(f"query heads {missing} would lose their KV head")
        return HeadLayout(
            tuple(self.query_heads[i] for i in q_keep),
            tuple(self.kv_heads[k] for k in kv_keep),
            tuple(kv_new_index[self.query_to_kv[i]] for i in q_keep),
            tuple(self.kv_policies[k] for k in kv_keep),
        )


def get_layout(attention: nn.Module, adapter: ArchitectureAdapter) -> HeadLayout:
    """Layout attached to ``attention``, or the dense layout of its current weights."""
    layout = getattr(attention, LAYOUT_ATTRIBUTE, None)
    if layout is None:
        layout = HeadLayout.dense(adapter.num_query_heads(attention), adapter.num_kv_heads(attention))
    return layout


def set_layout(attention: nn.Module, layout: HeadLayout | None) -> None:
    """Attach (or with ``None`` remove) a layout."""
    if layout is None:
        if hasattr(attention, LAYOUT_ATTRIBUTE):
            delattr(attention, LAYOUT_ATTRIBUTE)
    else:
        setattr(attention, LAYOUT_ATTRIBUTE, layout)

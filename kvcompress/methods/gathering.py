"""``GatheringSnapKV``: SnapKV eviction on the gathering KV groups only (issue 31, item 2).

Positional groups are windowed (:class:`~kvcompress.methods.positional.PositionalHeadOptimizer`) and dead heads
removed (:class:`~kvcompress.methods.dead_heads.DeadHeadPruner`); the remaining groups, those with at least one
*gathering* query head, kept every token. This method gives them the policy of the SnapKV baseline
(:class:`~kvcompress.layout.SnapKVPolicy`, SnapKV: Li et al. 2024, "SnapKV: LLM Knows What You are Looking for
Before Generation"): full attention in prefill, then, per KV head ``k`` with query heads ``Q(k)``, the last
``w`` prompt queries (the observation window) vote

    v_j = 1/|Q(k)| · Σ_{h ∈ Q(k)} Σ_{a < w} softmax(q_a^h K^T · s)_j,    j < L - w,

``v`` is max-pooled over positions (kernel ``pool_kernel``) and the ``budget - w`` prefix positions with the
largest pooled votes are kept with the observation window (``budget`` tokens per KV head); later tokens are all
kept. The selection is :func:`~kvcompress.attention_math.snapkv_keep_indices`, the baseline's, computed per
group after structural removal (removed query heads do not vote). Applied after the other two methods, it shares
their :class:`~kvcompress.cache.CompressedKVCache`: windowed rings, SnapKV stores and no KV for removed groups,
in one cache.

KV kept at a context of ``T`` tokens with ``n_w`` windowed, ``n_g`` gathering groups out of ``G``
(:func:`~kvcompress.methods.registry.kv_fraction`): ``(n_w·(sinks + window) + n_g·min(budget, T)) / (G·T)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from kvcompress.adapters import ModelShape
from kvcompress.classification import LABELS, HeadClassification, validate_heads
from kvcompress.layout import KVPolicy, SnapKVPolicy
from kvcompress.methods.kv_policy import KVPolicyMethod


def gathering_kv_groups(classification: HeadClassification) -> list[tuple[int, int]]:
    """KV groups with at least one gathering query head: neither windowable (all live heads positional) nor
    removable (all heads dead), i.e. the groups that positional + dead leave with their full cache."""
    return classification.kv_groups_where(set(LABELS), {"gathering"})


class GatheringSnapKV(KVPolicyMethod):
    """SnapKV (``budget`` tokens per KV head after prefill) on the given ``(layer, kv_head)`` groups, or on a
    classification's gathering groups (:func:`gathering_kv_groups`)."""

    name = "snapkv_gathering"

    def __init__(self, kv_groups: Iterable[tuple[int, int]] | HeadClassification, budget: int,
                 observation_window: int = 32, pool_kernel: int = 7):
        self.classification = kv_groups if isinstance(kv_groups, HeadClassification) else None
        self.kv_groups = gathering_kv_groups(self.classification) if self.classification else list(kv_groups)
        self.policy = SnapKVPolicy(budget, observation_window, pool_kernel)

    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        if self.classification is not None:
            self.classification.check_model(model)
        return dict.fromkeys(validate_heads(shape, self.kv_groups, kind="kv"), self.policy)

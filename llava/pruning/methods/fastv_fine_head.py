"""FastV with fine-grained head selection ("FinePruner"): aggregate only ``H`` selected heads.

Like FastV (prune once before layer K to R span tokens, from the last prompt token's attention at layer
K - 1), but the token scores average only the ``H`` heads that a head strategy ranks best, weighted by a
softmax of their head scores (``llava.pruning.head_selection``; DESIGN.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llava.pruning.head_selection import select_tokens_by_heads, validate_head_selection
from llava.pruning.methods.base import PruneStep, SinglePruneMethod
from llava.pruning.registry import register_method
from llava.pruning.selection import TokenSelection


@register_method
@dataclass
class FastVFineHead(SinglePruneMethod):
    """``agg_layer`` = K, ``keep`` = R, ``heads`` = H selected heads, ``head_strategy`` one of ``HEAD_STRATEGIES``.

    Parameters come from ``pruning_params`` (``heads``, ``head_strategy``); K and R from the FastV fields.
    """

    heads: int = 16
    head_strategy: str = "sparsity"

    name = "fastv_fine_head"
    params = ("heads", "head_strategy")

    def __post_init__(self) -> None:
        validate_head_selection(self.head_strategy, self.heads)

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        attn = step.query_attention_over_span(step.layer - 1)
        return select_tokens_by_heads(attn, keep, self.heads, self.head_strategy)

    @classmethod
    def from_config(cls, config: Any) -> FastVFineHead:
        params = config.pruning_params or {}
        method = cls(
            agg_layer=config.fast_v_agg_layer,
            keep=config.fast_v_attention_rank,
            heads=params.get("heads", cls.heads),
            head_strategy=params.get("head_strategy", cls.head_strategy),
        )
        validate_head_selection(method.head_strategy, method.heads, config.num_attention_heads)
        return method

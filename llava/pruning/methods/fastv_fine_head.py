"""FastV with fine-grained head selection ("FinePruner"): aggregate only ``H`` selected heads.

Like FastV (prune once before layer K to R span tokens, from the last prompt token's attention at layer
K - 1), but the token scores average only the ``heads`` that ``head_strategy`` ranks best, weighted by a
softmax of their head scores (``llava.pruning.head_selection``; DESIGN.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from llava.pruning.head_selection import select_tokens_by_heads, validate_head_selection
from llava.pruning.methods.base import PruneStep, SinglePruneMethod, register_method
from llava.pruning.selection import TokenSelection


@register_method
@dataclass
class FastVFineHead(SinglePruneMethod):
    """``agg_layer`` = K, ``keep`` = R, ``heads`` = H selected heads, ``head_strategy`` one of ``HEAD_STRATEGIES``."""

    heads: int = 16
    head_strategy: str = "sparsity"

    name = "fastv_fine_head"

    def __post_init__(self) -> None:
        validate_head_selection(self.head_strategy, self.heads)

    def validate(self, num_layers: int, span: int | None, num_heads: int | None = None) -> None:
        validate_head_selection(self.head_strategy, self.heads, num_heads)
        super().validate(num_layers, span, num_heads)

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        attn = step.query_attention_over_span(step.layer - 1)
        return select_tokens_by_heads(attn, keep, self.heads, self.head_strategy)

"""FastV: prune the image span once, after layer K-1, by the last prompt token's attention.

Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2". Keeps ``keep`` (R) span tokens chosen
from the attention of the last prompt token at layer ``agg_layer - 1`` (K - 1) with one of three
strategies (``llava.pruning.selection``): ``avg_all_heads`` (original), ``max_head``,
``weighted_combination``.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava.pruning.methods.base import PruneStep, SinglePruneMethod, register_method
from llava.pruning.selection import TokenSelection, select_span_tokens, validate_token_selection


@register_method
@dataclass
class FastV(SinglePruneMethod):
    """``agg_layer`` = K, ``keep`` = R, ``token_selection_method``, ``weighted_alpha``."""

    token_selection_method: str = "avg_all_heads"
    weighted_alpha: float = 0.5

    name = "fastv"

    def __post_init__(self) -> None:
        validate_token_selection(self.token_selection_method, self.weighted_alpha)

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        attn = step.query_attention_over_span(step.layer - 1)
        return select_span_tokens(attn, keep, self.token_selection_method, self.weighted_alpha)

"""FastV: prune the image span once, after layer K-1, by the last prompt token's attention.

Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2". Keeps ``keep`` (R) span tokens scored
by the attention of the last prompt token at layer ``agg_layer - 1`` (K - 1) with one of three
strategies (``llava.pruning.selection``): ``avg_all_heads`` (original), ``max_head``,
``weighted_combination``. The selection is ``ScorerMethod``'s top-R (``torch.topk``, as FastV's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.methods.base import PruneStep, register_method
from llava.pruning.methods.scorer import ScorerMethod
from llava.pruning.selection import score_span_tokens, strategy_metadata, validate_token_selection


@register_method
@dataclass
class FastV(ScorerMethod):
    """``agg_layer`` = K, ``keep`` = R, ``token_selection_method``, ``weighted_alpha``."""

    token_selection_method: str = "avg_all_heads"
    weighted_alpha: float = 0.5

    name = "fastv"
    use_fast_v = True

    def __post_init__(self) -> None:
        validate_token_selection(self.token_selection_method, self.weighted_alpha)

    def score(self, step: PruneStep) -> torch.Tensor:
        attn = step.query_attention_over_span(step.layer - 1)
        return score_span_tokens(attn, self.token_selection_method, self.weighted_alpha)

    def score_metadata(self, step: PruneStep) -> dict[str, Any]:
        """The strategy (as ``method``), ``max_head_idx`` and ``head_importance`` (FastV-Advanced's readout)."""
        attn = step.query_attention_over_span(step.layer - 1)
        return strategy_metadata(attn, self.token_selection_method, self.weighted_alpha)

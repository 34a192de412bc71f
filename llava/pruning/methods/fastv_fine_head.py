"""FastV with fine-grained head selection ("FinePruner"): aggregate only ``H`` selected heads.

Like FastV (prune once before layer K to R span tokens, from the last prompt token's attention at layer
K - 1), but the token scores average only the ``heads`` that ``head_strategy`` ranks best, weighted by a
softmax of their head scores (``llava.pruning.head_selection``; docs/methods.md, "FastV fine-grained heads").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.head_selection import HeadChoice, choose_heads, validate_head_selection
from llava.pruning.methods.base import PruneStep, register_method
from llava.pruning.methods.scorer import ScorerMethod


@register_method
@dataclass
class FastVFineHead(ScorerMethod):
    """``agg_layer`` = K, ``keep`` = R, ``heads`` = H selected heads, ``head_strategy`` one of ``HEAD_STRATEGIES``."""

    heads: int = 16
    head_strategy: str = "sparsity"

    name = "fastv_fine_head"

    def __post_init__(self) -> None:
        validate_head_selection(self.head_strategy, self.heads)

    def validate(
        self, num_layers: int, span: int | None, num_heads: int | None = None, hidden_size: int | None = None
    ) -> None:
        validate_head_selection(self.head_strategy, self.heads, num_heads)
        super().validate(num_layers, span, num_heads, hidden_size)

    def head_choice(self, step: PruneStep) -> HeadChoice:
        """The selected heads and their token scores at this step (computed once per step)."""
        attn = step.query_attention_over_span(step.layer - 1)
        return step.cached((self.name, self.heads, self.head_strategy), lambda: choose_heads(attn, self.heads, self.head_strategy))

    def score(self, step: PruneStep) -> torch.Tensor:
        return self.head_choice(step).token_scores

    def score_metadata(self, step: PruneStep) -> dict[str, Any]:
        """The head strategy and count, ``selected_heads`` and ``head_weights`` ``[B, H]`` (tensors, read as lists)."""
        choice = self.head_choice(step)
        return {
            "method": self.name,
            "head_strategy": self.head_strategy,
            "heads": self.heads,
            "selected_heads": choice.head_index,
            "head_weights": choice.head_weights,
        }

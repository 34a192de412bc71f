"""PyramidDrop (PDrop): prune the span in stages, keeping a geometric share of it after each stage.

Xing et al., 2024, "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction". Before each layer ``l`` of ``layer_list`` the span shrinks to ``round(S * ratio)``
tokens (ratios are shares of the *original* span ``S``, cumulative), ranked by the attention of the last
prompt token at layer ``l`` itself (q and k of the layer about to run, computed from the hidden states
entering it), averaged over heads. Defaults: layers ``[8, 16, 24]``, ratios ``[0.5, 0.25, 0.125]``.

Budgets: with ``lambda`` the ratios are ``lambda^s`` after stage ``s`` (1-based); a budget of ``T``
equivalent tokens uses layers ``[2, 8, 16, 24]`` and the ``lambda`` (found by bisection) whose rounded
schedule costs ``T``; for LLaVA-1.5-7B this gives 0.581 / 0.437 / 0.196 for 192 / 128 / 64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llava.pruning.budget import geometric_decay_for_budget, geometric_ratios, stage_keeps
from llava.pruning.methods.base import PruneStep, PruningMethod, register_method, validate_stages, without_budget_fields
from llava.pruning.selection import TokenSelection, select_span_tokens

BUDGET_LAYERS = (2, 8, 16, 24)


@register_method
@dataclass
class PyramidDrop(PruningMethod):
    """``layer_list`` (increasing) and ``ratio_list`` (shares of the original span, decreasing), or
    ``lambda`` (ratios ``lambda^s``) instead of ``ratio_list``."""

    layer_list: tuple[int, ...] = (8, 16, 24)
    ratio_list: tuple[float, ...] | None = None
    decay: float | None = None  # "lambda" in the paper and in ``from_params``

    name = "pdrop"

    def __post_init__(self) -> None:
        self.layer_list = tuple(self.layer_list)
        if self.ratio_list is not None and self.decay is not None:
            raise ValueError("pdrop: give either lambda or ratio_list, not both")
        if self.decay is not None and not 0 < self.decay <= 1:
            raise ValueError(f"pdrop: lambda must lie in (0, 1], got {self.decay}")
        if self.ratio_list is None and self.decay is None:
            self.ratio_list = (0.5, 0.25, 0.125)
        if self.ratio_list is not None:
            self.ratio_list = tuple(self.ratio_list)
        validate_stages("pdrop", self.layer_list, self.ratios, ("layer_list", "ratio_list"))
        if any(not 0 < r <= 1 for r in self.ratios):
            raise ValueError(f"pdrop: ratio_list values must lie in (0, 1], got {list(self.ratios)}")

    @property
    def ratios(self) -> tuple[float, ...]:
        if self.decay is not None:
            return geometric_ratios(self.decay, len(self.layer_list))
        return self.ratio_list

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None) -> PyramidDrop:
        """``lambda`` is accepted under the paper's name."""
        params = dict(params or {})
        if "lambda" in params:
            params["decay"] = params.pop("lambda")
        return super().from_params(params)

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return list(zip(self.layer_list, stage_keeps(span, self.ratios), strict=True))

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        selection = select_span_tokens(step.query_attention_over_span(step.layer), keep, "avg_all_heads")
        selection.metadata = {"method": "pdrop", "stage": step.stage, "scoring_layer": step.layer}
        return selection

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> PyramidDrop:
        """Layers ``[2, 8, 16, 24]`` (those below ``num_layers``, or ``layer_list`` when given) and the
        ``lambda`` that costs ``target_tokens``."""
        params = without_budget_fields(cls, params, ("ratio_list", "decay", "lambda"))
        layers = tuple(params.pop("layer_list", [layer for layer in BUDGET_LAYERS if layer < num_layers]))
        decay = geometric_decay_for_budget("pdrop", target_tokens, num_layers, span, layers)
        return cls.from_params({**params, "layer_list": layers, "decay": decay})

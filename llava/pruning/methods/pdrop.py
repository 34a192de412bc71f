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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava.pruning.budget import equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.base import PruneStep, PruningMethod, validate_stages
from llava.pruning.registry import register_method
from llava.pruning.selection import TokenSelection, select_span_tokens

BUDGET_LAYERS = (2, 8, 16, 24)


def geometric_ratios(decay: float, stages: int) -> tuple[float, ...]:
    """``(lambda, lambda^2, ..., lambda^stages)``."""
    return tuple(decay ** (s + 1) for s in range(stages))


def stage_keeps(span: int, ratios: Sequence[float]) -> list[int]:
    """Tokens kept after each stage: ``round(span * ratio)``, at least 1."""
    return [max(1, round(span * ratio)) for ratio in ratios]


def pdrop_decay_for_budget(target_tokens: float, num_layers: int, span: int, layers: Sequence[int]) -> float:
    """``lambda`` in (0, 1] whose rounded schedule over ``layers`` costs closest to ``target_tokens``.

    Bisection on the (non-decreasing) equivalent tokens of ``stage_keeps(span, lambda^s)``.
    """
    lowest = layers[0] * span / num_layers
    if not lowest < target_tokens <= span:
        raise ValueError(
            f"pdrop: {target_tokens} equivalent tokens are out of reach with layers {list(layers)} of {num_layers}: "
            f"valid range is ({lowest:.1f}, {span}]"
        )

    def cost(decay: float) -> float:
        keeps = stage_keeps(span, geometric_ratios(decay, len(layers)))
        return equivalent_tokens(span_tokens_per_layer(num_layers, span, list(zip(layers, keeps, strict=True))))

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if cost(middle) < target_tokens:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda decay: abs(cost(decay) - target_tokens))


@register_method
@dataclass
class PyramidDrop(PruningMethod):
    """``layer_list`` (increasing) and ``ratio_list`` (shares of the original span, decreasing) from ``pruning_params``.

    ``pruning_params`` may give ``lambda`` instead of ``ratio_list`` (ratios ``lambda^s``).
    """

    layer_list: tuple[int, ...] = (8, 16, 24)
    ratio_list: tuple[float, ...] = (0.5, 0.25, 0.125)

    name = "pdrop"
    params = ("layer_list", "ratio_list", "lambda")

    def __post_init__(self) -> None:
        self.layer_list = tuple(self.layer_list)
        self.ratio_list = tuple(self.ratio_list)
        validate_stages("pdrop", self.layer_list, self.ratio_list, ("layer_list", "ratio_list"))
        if any(not 0 < r <= 1 for r in self.ratio_list):
            raise ValueError(f"pdrop: ratio_list values must lie in (0, 1], got {list(self.ratio_list)}")

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return list(zip(self.layer_list, stage_keeps(span, self.ratio_list), strict=True))

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        selection = select_span_tokens(step.query_attention_over_span(step.layer), keep, "avg_all_heads")
        selection.metadata = {"method": "pdrop", "stage": step.stage, "scoring_layer": step.layer}
        return selection

    @classmethod
    def from_config(cls, config: Any) -> PyramidDrop:
        params = config.pruning_params or {}
        layers = tuple(params.get("layer_list", cls.layer_list))
        if "lambda" in params and "ratio_list" in params:
            raise ValueError("pdrop: give either lambda or ratio_list in pruning_params, not both")
        if "lambda" in params:
            ratios = geometric_ratios(float(params["lambda"]), len(layers))
        else:
            ratios = tuple(params.get("ratio_list", cls.ratio_list))
        return cls(layer_list=layers, ratio_list=ratios)

    @classmethod
    def config_for_budget(cls, target_tokens: float, num_layers: int, span: int, config: Any) -> dict[str, Any]:
        """Layers ``[2, 8, 16, 24]`` (those below ``num_layers``) and the ``lambda`` that costs ``target_tokens``."""
        layers = [layer for layer in BUDGET_LAYERS if layer < num_layers]
        decay = pdrop_decay_for_budget(target_tokens, num_layers, span, layers)
        params = {k: v for k, v in (config.pruning_params or {}).items() if k != "ratio_list"}
        return {"pruning_params": {**params, "layer_list": layers, "lambda": decay}}

"""PyramidDrop (PDrop): prune the span in stages, keeping a geometric share of it after each stage.

Xing et al., 2024, "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction". Official code: Cooperx521/PyramidDrop at 6444f304,
``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward`` and ``pdrop_rank_drop``), step by step:

* after layer ``l - 1`` for each ``l`` of ``layer_list`` (``rank_layer = layer_idx + 1``, l.1222-1223), the
  span is ranked with layer ``l``'s own q and k, computed from the hidden states entering it
  (``input_layernorm``, ``q_proj`` / ``k_proj``, RoPE at the current positions, l.1322-1342);
* the query is the last prompt token (``prompt_total_len - 1``, l.1390-1392); its softmax over the whole
  causal row is averaged over heads and restricted to the span (l.1397-1401);
* the span keeps ``int(S * ratio)`` tokens (floor; ratios are shares of the *original* span, cumulative,
  l.1306-1307), the ``topk`` of the scores in ascending order (l.1405-1407);
* the shorter sequence is renumbered ``0..n-1`` (l.1446), and a decode step's position drops by the tokens
  each stage removed (l.1260-1268), so every layer sees contiguous positions.

Defaults are the official script's: layers ``[8, 16, 24]``, ratios ``[0.5, 0.25, 0.125]``
(``scripts/v1_5/pdrop_eval/*.sh``). Our options: ``positions="original"`` (kept tokens keep their RoPE
positions, as FastV) and ``count_rounding="round"``.

Edge: a stage whose ``int(S * ratio)`` is 0 (the official ``topk(0)`` drops every image token) keeps 1 token
here, as the engine needs a live span.

Budgets: the official repository ships only the ``[8, 16, 24]`` / ``lambda = 0.5`` script. A
``visual_token_num`` of 192 / 128 / 64 on a 32-layer LLM with 576 image tokens uses layers ``[2, 8, 16, 24]``
and ``lambda`` 0.581 / 0.437 / 0.196 (ratios ``lambda^s`` after stage ``s``; docs/methods.md's FLOPs-matched
settings), counted as the official code counts (``int``): 334/194/112/65, 251/109/48/21, 112/22/4/0
tokens (the last 0 keeps 1: the edge below), 191.4 / 127.6 / 63.8 equivalent tokens. Any other budget or model: the ``lambda`` (bisection) whose
schedule costs ``T`` (ours).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llava.pruning.budget import COUNT_ROUNDINGS, geometric_decay_for_budget, geometric_ratios, stage_keeps
from llava.pruning.methods.base import (
    RENUMBERED_POSITIONS,
    PruneStep,
    PruningMethod,
    register_method,
    validate_stages,
    without_budget_fields,
)
from llava.pruning.selection import TokenSelection, score_span_tokens, top_r_sorted

BUDGET_LAYERS = (2, 8, 16, 24)
LLAVA_7B_DECAY = {192: 0.581, 128: 0.437, 64: 0.196}  # docs/methods.md, "PDrop (`pdrop`)", over BUDGET_LAYERS


@register_method
@dataclass
class PyramidDrop(PruningMethod):
    """``layer_list`` (increasing) and ``ratio_list`` (shares of the original span, decreasing), or
    ``lambda`` (ratios ``lambda^s``) instead of ``ratio_list``; ``positions`` (``"renumbered"``, official, or
    ``"original"``) and ``count_rounding`` (``"floor"``, official ``int``, or ``"round"``)."""

    layer_list: tuple[int, ...] = (8, 16, 24)
    ratio_list: tuple[float, ...] | None = None
    decay: float | None = None  # "lambda" in the paper and in ``from_params``
    positions: str = RENUMBERED_POSITIONS
    count_rounding: str = "floor"

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
        if self.count_rounding not in COUNT_ROUNDINGS:
            raise ValueError(f"pdrop: unknown count_rounding {self.count_rounding!r}; valid: {', '.join(COUNT_ROUNDINGS)}")
        self.keeps_original_positions()  # rejects an unknown ``positions``

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
        return list(zip(self.layer_list, stage_keeps(span, self.ratios, self.count_rounding), strict=True))

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        scores = score_span_tokens(step.query_attention_over_span(step.layer), "avg_all_heads")
        return TokenSelection(
            top_r_sorted(scores, keep), scores, {"method": "pdrop", "stage": step.stage, "scoring_layer": step.layer}
        )

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> PyramidDrop:
        """Layers ``[2, 8, 16, 24]`` (those below ``num_layers``, or ``layer_list`` when given) and a ``lambda``:
        docs/methods.md's LLaVA-1.5-7B settings (``LLAVA_7B_DECAY``) for 192 / 128 / 64 tokens of a 576-token span
        over 32 layers, else the ``lambda`` (bisection) that costs ``target_tokens``."""
        params = without_budget_fields(cls, params, ("ratio_list", "decay", "lambda"))
        layers = tuple(params.pop("layer_list", [layer for layer in BUDGET_LAYERS if layer < num_layers]))
        rounding = params.get("count_rounding", cls.count_rounding)
        if (num_layers, span, layers) == (32, 576, BUDGET_LAYERS) and target_tokens in LLAVA_7B_DECAY:
            decay = LLAVA_7B_DECAY[target_tokens]
        else:
            decay = geometric_decay_for_budget("pdrop", target_tokens, num_layers, span, layers, rounding)
        return cls.from_params({**params, "layer_list": layers, "decay": decay})

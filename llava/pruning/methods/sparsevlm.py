"""SparseVLM (v1.5 budgets): text-guided, staged pruning of the span.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference".
Text raters are chosen once from the layer-0 embeddings (``llava.pruning.text_guided``); before each layer
of ``prune_layers`` (default ``[2, 6, 15]``) the span shrinks to the next of ``stage_budgets``, ranked by
the mean attention (over heads and raters) that the raters pay each live span token.

Choices where DESIGN.md leaves one:

* the attention comes from q.k of the layer *before* each boundary (layers 1, 5, 14: the last layer that
  still saw every live token, as FastV uses layer K - 1), so layers 2, 6, 15 are the first to run shorter;
* budgets: the published v1.5 stage budgets (192: 300/200/110, 128: 303/110/36, 64: 66/30/17) cost
  188.2 / 123.9 / 61.7 equivalent tokens under our accounting (mean over the 32 layers); a
  ``visual_token_num`` budget therefore scales the nearest preset by the factor that costs the target
  (e.g. 192 -> 307/205/113). Pass ``stage_budgets`` explicitly for the published numbers;
* ``version="v2"``: the same raters and stages, scored with only the ``v2_heads`` (14) heads of most
  rater -> span attention and with the attention divided by a RoPE-only positional bias
  (``llava.pruning.text_guided``);
* token recycling (merging pruned tokens into cluster tokens) is not implemented: the sequence only
  ever loses span tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.budget import equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.base import PruneStep, PruningMethod, validate_stages
from llava.pruning.registry import register_method
from llava.pruning.selection import TokenSelection, top_r_sorted
from llava.pruning.text_guided import (
    debiased_span_attention,
    rater_span_scores,
    rope_positional_bias,
    text_raters,
    top_rater_heads,
)

STAGE_BUDGET_PRESETS = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}
PRUNE_LAYERS = (2, 6, 15)
VERSIONS = ("v1.5", "v2")


def scaled_stage_budgets(
    target_tokens: float, num_layers: int, span: int, layers: Sequence[int], preset: Sequence[int]
) -> list[int]:
    """``preset`` scaled by the factor (bisection) whose rounded schedule over ``layers`` costs ``target_tokens``."""
    lowest = layers[0] * span / num_layers
    if not lowest < target_tokens <= span:
        raise ValueError(
            f"sparsevlm: {target_tokens} equivalent tokens are out of reach with layers {list(layers)} of "
            f"{num_layers}: valid range is ({lowest:.1f}, {span}]"
        )

    def budgets(factor: float) -> list[int]:
        return [min(span, max(1, round(b * factor))) for b in preset]

    def cost(factor: float) -> float:
        schedule = list(zip(layers, budgets(factor), strict=True))
        return equivalent_tokens(span_tokens_per_layer(num_layers, span, schedule))

    low, high = 0.0, span / min(preset)
    for _ in range(60):
        middle = (low + high) / 2
        if cost(middle) < target_tokens:
            low = middle
        else:
            high = middle
    return budgets(min((low, high), key=lambda factor: abs(cost(factor) - target_tokens)))


def _expand(index: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` token index -> ``[B, K, d]`` gather index for a ``[B, N, d]`` rotary table."""
    return index[:, :, None].expand(-1, -1, rope.shape[-1])


def rater_rows(step: PruneStep) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, Q]`` current indices of each sample's text raters (padded with the query row) and their weights."""
    rows, weights = [], []
    for b in range(step.query_index.shape[0]):
        query = int(step.query_index[b])
        original_query = int(step.original_index[b, query])
        start, end = (int(x) for x in step.original_span[b])
        embeddings = step.input_embeddings[b]
        raters = text_raters(embeddings[start:end], embeddings[end : original_query + 1])
        offsets = raters.nonzero()[:, 0]  # positions after the span end
        rows.append(query - (original_query - end) + offsets)
        weights.append(torch.full((len(offsets),), 1.0 / len(offsets)))
    width = max(len(r) for r in rows)
    index = step.query_index[:, None].repeat(1, width).clone()
    weight = torch.zeros(len(rows), width)
    for b, (row, w) in enumerate(zip(rows, weights, strict=True)):
        index[b, : len(row)] = row.to(index.device)
        weight[b, : len(w)] = w
    return index, weight.to(step.hidden_states.device)


@register_method
@dataclass
class SparseVLM(PruningMethod):
    """``prune_layers``, ``stage_budgets`` (span tokens kept from each layer on), ``version`` and ``v2_heads``
    from ``pruning_params``."""

    prune_layers: tuple[int, ...] = PRUNE_LAYERS
    stage_budgets: tuple[int, ...] = STAGE_BUDGET_PRESETS[192]
    version: str = "v1.5"
    v2_heads: int = 14

    name = "sparsevlm"

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"sparsevlm: unknown version {self.version!r}; valid: {', '.join(VERSIONS)}")
        if self.v2_heads < 1:
            raise ValueError(f"sparsevlm: v2_heads must be >= 1, got {self.v2_heads}")
        self.prune_layers = tuple(self.prune_layers)
        self.stage_budgets = tuple(self.stage_budgets)
        validate_stages("sparsevlm", self.prune_layers, self.stage_budgets, ("prune_layers", "stage_budgets"))

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return list(zip(self.prune_layers, self.stage_budgets, strict=True))

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        rows, weights = rater_rows(step)
        probs = step.attention(step.layer - 1, rows)  # [B, H, Q, N]
        index = step.span_index[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
        span_attention = probs.gather(-1, index)  # [B, H, Q, S]
        if self.version == "v2":
            heads = top_rater_heads(span_attention, weights, self.v2_heads)
            span_attention = span_attention.gather(1, heads[:, :, None, None].expand(-1, -1, *span_attention.shape[2:]))
            cos, sin = step.rope
            rows_rope = (cos.gather(1, _expand(rows, cos)), sin.gather(1, _expand(rows, sin)))
            span_rope = (cos.gather(1, _expand(step.span_index, cos)), sin.gather(1, _expand(step.span_index, sin)))
            span_attention = debiased_span_attention(span_attention, rope_positional_bias(rows_rope, span_rope))
        scores = rater_span_scores(span_attention, weights)
        metadata = {
            "method": "sparsevlm",
            "version": self.version,
            "stage": step.stage,
            "scoring_layer": step.layer - 1,
            "raters": (weights > 0).sum(dim=1).tolist(),
        }
        return TokenSelection(top_r_sorted(scores, keep), scores, metadata)

    @classmethod
    def from_config(cls, config: Any) -> SparseVLM:
        params = config.pruning_params or {}
        return cls(
            prune_layers=tuple(params.get("prune_layers", cls.prune_layers)),
            stage_budgets=tuple(params.get("stage_budgets", cls.stage_budgets)),
            version=params.get("version", cls.version),
            v2_heads=params.get("v2_heads", cls.v2_heads),
        )

    @classmethod
    def config_for_budget(cls, target_tokens: float, num_layers: int, span: int, config: Any) -> dict[str, Any]:
        """The nearest v1.5 preset (192/128/64), scaled so the schedule costs ``target_tokens``."""
        params = dict(config.pruning_params or {})
        layers = tuple(params.get("prune_layers", cls.prune_layers))
        preset = STAGE_BUDGET_PRESETS[min(STAGE_BUDGET_PRESETS, key=lambda budget: abs(budget - target_tokens))]
        budgets = scaled_stage_budgets(target_tokens, num_layers, span, layers, preset)
        return {"pruning_params": {**params, "prune_layers": list(layers), "stage_budgets": budgets}}

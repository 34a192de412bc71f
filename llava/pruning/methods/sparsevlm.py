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
* ``recycling=True`` (v1.5 token recycling, ``llava.pruning.recycling``): at every stage the top
  ``recycle_ratio`` (30%) of the pruned tokens by score are merged into ``recycled // 10 + 1`` cluster
  tokens (density peaks on the hidden states entering the layer, mean of the members). With our
  original-position semantics a cluster token takes the slot of its centre (its RoPE position and mask
  column), so it sits in raster order among the kept tokens rather than after them as in the official
  code, and the cache / decode masks need nothing new. The stage budget counts the cluster tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.budget import bisect_for_target, check_budget_reachable, equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.base import PruneStep, PruningMethod, register_method, validate_stages, without_budget_fields
from llava.pruning.recycling import kept_count_with_recycling, recycle_pruned_tokens
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
    check_budget_reachable("sparsevlm", target_tokens, num_layers, span, layers[0])

    def budgets(factor: float) -> list[int]:
        return [min(span, max(1, round(b * factor))) for b in preset]

    def cost(factor: float) -> float:
        schedule = list(zip(layers, budgets(factor), strict=True))
        return equivalent_tokens(span_tokens_per_layer(num_layers, span, schedule))

    return budgets(bisect_for_target(cost, target_tokens, 0.0, span / min(preset)))


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
    """``prune_layers``, ``stage_budgets`` (span tokens kept from each layer on), ``version``, ``v2_heads``,
    ``recycling`` and ``recycle_ratio``."""

    prune_layers: tuple[int, ...] = PRUNE_LAYERS
    stage_budgets: tuple[int, ...] = STAGE_BUDGET_PRESETS[192]
    version: str = "v1.5"
    v2_heads: int = 14
    recycling: bool = False
    recycle_ratio: float = 0.3

    name = "sparsevlm"

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"sparsevlm: unknown version {self.version!r}; valid: {', '.join(VERSIONS)}")
        if self.v2_heads < 1:
            raise ValueError(f"sparsevlm: v2_heads must be >= 1, got {self.v2_heads}")
        if not 0.0 < self.recycle_ratio <= 1.0:
            raise ValueError(f"sparsevlm: recycle_ratio must lie in (0, 1], got {self.recycle_ratio}")
        self.prune_layers = tuple(self.prune_layers)
        self.stage_budgets = tuple(self.stage_budgets)
        validate_stages("sparsevlm", self.prune_layers, self.stage_budgets, ("prune_layers", "stage_budgets"))

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return list(zip(self.prune_layers, self.stage_budgets, strict=True))

    def validate(self, num_layers: int, span: int | None, num_heads: int | None = None) -> None:
        """The common checks; with recycling also that every stage's budget can hold its cluster tokens."""
        super().validate(num_layers, span, num_heads)
        if self.recycling and span is not None:
            live = span
            for budget in self.stage_budgets:
                kept_count_with_recycling(live, budget, self.recycle_ratio)
                live = budget

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
        if not self.recycling:
            return TokenSelection(top_r_sorted(scores, keep), scores, metadata)
        return self._recycle(step, scores, keep, metadata)

    def _recycle(self, step: PruneStep, scores: torch.Tensor, keep: int, metadata: dict) -> TokenSelection:
        """Keep fewer tokens by score and fill the budget with cluster tokens of the best pruned ones."""
        kept = top_r_sorted(scores, kept_count_with_recycling(scores.shape[1], keep, self.recycle_ratio))
        span_hidden = step.hidden_states.gather(1, _expand(step.span_index, step.hidden_states))
        per_sample = [recycle_pruned_tokens(scores[b], span_hidden[b], kept[b], self.recycle_ratio)
                      for b in range(scores.shape[0])]
        indices, columns, merged = (torch.stack(parts) for parts in zip(*per_sample, strict=True))
        metadata["cluster_tokens"] = columns.shape[1]
        return TokenSelection(indices, scores, metadata, replacement=(columns, merged) if columns.numel() else None)

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> SparseVLM:
        """The nearest v1.5 preset (192/128/64), scaled so the schedule costs ``target_tokens``."""
        params = without_budget_fields(cls, params, ("stage_budgets",))
        layers = tuple(params.pop("prune_layers", cls.prune_layers))
        preset = STAGE_BUDGET_PRESETS[min(STAGE_BUDGET_PRESETS, key=lambda budget: abs(budget - target_tokens))]
        budgets = scaled_stage_budgets(target_tokens, num_layers, span, layers, preset)
        return cls.from_params({**params, "prune_layers": layers, "stage_budgets": budgets})

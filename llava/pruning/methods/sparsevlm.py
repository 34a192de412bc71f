"""SparseVLM: text-guided, staged pruning of the span, with token recycling.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference".
The default is what the official v1.5 code does: Gumpest/SparseVLMs, branch ``v1.5`` at
734d9003879689713a132b83297dfad060a5c9af, ``llava/model/language_model/`` (MSL = ``modelling_sparse_llama.py``,
every layer runs ``LlamaDynamicvitFlashAttention2``, installed by ``llava/model/builder.py`` l.114-121):

1. raters (MSL l.199-204): text tokens after the span chosen once from the layer-0 embeddings
   (``llava.pruning.text_guided.text_raters``, for the whole batch at once: ``padded_text_raters``);
2. each layer ``l`` of ``prune_layers`` (MSL l.69: 2, 6, 15) runs on the whole current sequence and returns
   its attention probabilities (MSL l.223-267; ``softmax(q k^T / sqrt(d) + causal)`` of layer ``l``'s q/k,
   l.564-578); in the engine that is the boundary ``l + 1`` scored with ``step.attention(l)``;
3. scores (``score.py`` l.21-26): mean over heads, rater rows, span columns, mean over raters; the
   ``min(budget, live - 1)`` best are kept (``score.py`` l.35, so a stage always prunes at least one token);
4. token recycling, always on (MSL l.279-296, ``llava.pruning.recycling``): the best pruned tokens of layer
   ``l``'s *output* are merged into cluster tokens, which the next layer sees right after the kept span
   tokens (MSL l.298-305). The stage budget does not count them: the span holds ``kept + clusters`` tokens
   (MSL l.311), e.g. 309 / 204 / 113 for the 192 preset;
5. positions are renumbered ``0..n-1`` after each stage (MSL l.308), and a decode step takes the length of
   its layer's cache as position (MSL l.553-554), i.e. the prompt's positions continue contiguously in
   every layer (``positions="renumbered"``, the engine's renumbering).

Presets (``score.py`` l.7-15; 96 from the ``v2.0`` branch's ``score.py`` l.13): stage budgets per published
budget, for LLaVA-1.5's 576 visual tokens. The authors count a budget as the mean over layers of the visual
tokens *leaving* each layer (MSL l.363, l.371), 192.0 / 128.6 / 64.8 for the 192 / 128 / 64 presets; our
equivalent tokens count the tokens each layer processes, 206.5 / 145.4 / 82.3 for the same runs.
``for_budget`` gives the presets unchanged for a published budget on a 576-token span; any other budget or
span scales the nearest preset so that our equivalent tokens hit the target (ours).

SparseVLM+ (``version="v2"``): branch ``v2.0`` at 9e1f649ef6a78878e2b10d1d6f49ecd7f4d84094 with
``USE_VERSION=2_0``: the probabilities divided by the raw RoPE-only logit (MSL l.242-251), the 14 heads of
most corrected rater attention (MSL l.256-257, ``score.py`` l.48-55), no recycling (MSL l.273-274), original
positions (MSL l.311-312, l.653-659), its own presets (``score.py`` l.11-14). On a model with fewer than 14
heads every head is used (the official ``topk(14)`` would fail).

Our choices, options here (off by default): ``score_before_layer=True`` prunes *before* each layer of
``prune_layers``, scored with the layer before it (our former default); ``recycling=False``;
``positions="original"`` (kept tokens keep their RoPE positions; a cluster token then takes the slot and
position of its centre token). Where the official code assumes batch size 1 (MSL l.311, ``score.py``
l.36), every sample here gets its own raters, scores, clusters; spans of equal length give equal counts.
Not reproduced (see ``llava.pruning.recycling`` / ``text_guided``): the random density noise, float16
arithmetic, the empty rater set; GQA keys are repeated as the attention does (the official logits path
has no repeat). Record: in the official layout a kept token may move to an earlier slot to make room for
the cluster tokens; the selection's ``sources`` label every slot with its token (a cluster with its centre),
so ``kept_index`` names tokens; ``kept_by_score_positions`` leaves the cluster tokens out. The metadata
(``raters``, ``kept_by_score``, ``cluster_centres``) is recorded as tensors on the device and read as lists.
Pinned by ``tests/reference/test_sparsevlm_reference.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.budget import bisect_for_target, check_budget_reachable, equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.base import (
    ORIGINAL_POSITIONS,
    RENUMBERED_POSITIONS,
    PruneStep,
    PruningMethod,
    register_method,
    validate_stages,
    without_budget_fields,
)
from llava.pruning.record import PruningRecord
from llava.pruning.recycling import RECYCLE_RATIO, ascending_true, recycle_pruned_tokens, recycled_and_cluster_counts
from llava.pruning.scoring import gather_rows
from llava.pruning.selection import TokenSelection, top_r_sorted
from llava.pruning.text_guided import rater_span_scores, rope_logit_bias, top_rater_heads

PRUNE_LAYERS = (2, 6, 15)
OFFICIAL_SPAN = 576
STAGE_BUDGET_PRESETS = {
    "v1.5": {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)},
    "v2": {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)},
}
VERSIONS = tuple(STAGE_BUDGET_PRESETS)
VERSION_DEFAULTS = {"v1.5": (True, RENUMBERED_POSITIONS), "v2": (False, ORIGINAL_POSITIONS)}  # recycling, positions
V2_HEADS = 14


def padded_text_raters(visual: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
    """``[B, W]`` bool: ``text_raters`` of every sample at once, sample ``b``'s text being the rows of ``text[b]``
    where ``text_valid[b]`` (``[B, W]``, its first ``T_b`` columns) is True; padding rows never rate.

    The rule of ``llava.pruning.text_guided.text_raters`` (v1.5 MSL l.200-204) with the padding masked out:
    ``r_t = mean_v softmax_t(e_v . e_t)`` over the sample's own text tokens (padding logits at ``-inf``, so
    ``exp = 0``), raters ``r_t > mean_t r_t`` (the mean over its ``T_b`` tokens), every text token where none is
    above. ``visual``: ``[B, S, d]``; ``text``: ``[B, W, d]`` layer-0 embeddings.
    """
    logits = (visual @ text.transpose(-1, -2)).masked_fill(~text_valid[:, None, :], float("-inf"))
    relevance = logits.softmax(dim=-1).mean(dim=1)  # [B, W], 0 on padding
    mean = relevance.sum(dim=-1, keepdim=True) / text_valid.sum(dim=-1, keepdim=True)
    raters = (relevance > mean) & text_valid
    return raters | (text_valid & ~raters.any(dim=-1, keepdim=True))


def most_raters(count: torch.Tensor) -> int:
    """The most raters of any sample (``count`` ``[B, 1]``): the width of the rater rows, whose attention the
    stage computes. Read on the host, the one sync of the rater rows (a shape from the data)."""
    return int(count.max())


def rater_rows(step: PruneStep) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, Q]`` current indices of each sample's text raters, ascending, then the query row as padding, and
    their weights ``[B, Q]``: ``1 / raters`` on a rater's row, 0 on padding; ``Q`` the most raters of any sample.

    The text is what follows the span up to the selection query (the last prompt token), as the official
    code's "everything after the image" at prefill; its raters come from the layer-0 embeddings
    (``padded_text_raters``). Computed for the whole batch on the device, the text padded to ``W``, the number
    of tokens outside the span (never pruned: a bound on every sample's text read off the shapes); only ``Q``
    is read back (``most_raters``).
    """
    embeddings = step.input_embeddings
    length = embeddings.shape[1]
    outside = step.hidden_states.shape[1] - step.span_index.shape[1]
    device = step.query_index.device
    start, end = step.original_span[:, :1].to(device), step.original_span[:, 1:].to(device)  # [B, 1]
    query = step.query_index[:, None]
    original_query = step.original_index.gather(1, query)
    offsets = torch.arange(outside, device=device)  # positions after the span end
    visual = gather_rows(embeddings, start + torch.arange(length - outside, device=device))  # [B, S_0, d]
    text = gather_rows(embeddings, (end + offsets).clamp_max(length - 1))  # [B, W, d]
    raters = padded_text_raters(visual, text, offsets <= original_query - end)
    count = raters.sum(dim=1, keepdim=True)  # [B, 1]
    width = most_raters(count)
    first = (~raters).to(torch.uint8).argsort(dim=1, stable=True)[:, :width]  # rater offsets first, ascending
    is_rater = offsets[:width] < count
    index = torch.where(is_rater, query - (original_query - end) + first, query)
    weight = torch.where(is_rater, (1.0 / count.double()).float(), 0.0)  # 1 / n in float64, then float32
    return index, weight.to(step.hidden_states.device)


def cluster_layout(
    kept: torch.Tensor, centres: torch.Tensor, merged: torch.Tensor, hidden: torch.Tensor, at_centres: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where one sample's kept and cluster tokens go: ``(slots, labels, sources, content)``, each of length
    ``R + C``.

    ``slots``: the span columns that stay, ascending; ``labels``: the span column whose token each slot
    holds (-1: a cluster token); ``sources``: the same with each cluster labelled by its centre (what the
    record shows); ``content``: each slot's hidden state. Official (``at_centres=False``, MSL l.298-305): the
    kept tokens in order, then the clusters in the official order; the slots are the kept columns and the
    last ``C`` pruned ones, so a kept token moves only when fewer than ``C`` pruned tokens follow the last
    kept one (with renumbered positions a slot is only a place in the order).
    ``at_centres=True`` (for original positions): each cluster token takes its centre's slot.
    """
    labels = torch.cat([kept, kept.new_full((centres.numel(),), -1)])
    sources = torch.cat([kept, centres.to(kept.device)])
    content = torch.cat([hidden[kept], merged.to(hidden.dtype)])
    if at_centres:
        slots, order = sources.sort()
        return slots, labels[order], slots, content[order]
    pruned = torch.ones(hidden.shape[0], dtype=torch.bool, device=kept.device)
    pruned[kept] = False
    tail = ascending_true(pruned, hidden.shape[0] - kept.numel())[hidden.shape[0] - kept.numel() - centres.numel() :]
    return torch.cat([kept, tail]).sort().values, labels, sources, content


def replacement_columns(slots: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B, M]`` columns whose slot holds another token than its own (``M``: the most of any sample; a
    sample with fewer is padded with columns that hold their own token, where a replacement changes nothing).

    ``M`` depends on the data (the kept tokens after the first cluster slot move), so it is read on the host:
    with ``most_raters``, one of the two syncs a recycling stage keeps on the measured path."""
    moved = slots != labels
    return (~moved).long().argsort(dim=1, stable=True)[:, : int(moved.sum(dim=1).max())]


@register_method
@dataclass
class SparseVLM(PruningMethod):
    """``prune_layers`` (official layer numbers), ``stage_budgets`` (tokens kept by score per stage; default:
    the version's 192 preset), ``version`` ("v1.5" or "v2"), ``recycling`` and ``positions`` (default: the
    version's official choice), ``score_before_layer``, ``recycle_ratio``, ``v2_heads``."""

    prune_layers: tuple[int, ...] = PRUNE_LAYERS
    stage_budgets: tuple[int, ...] | None = None
    version: str = "v1.5"
    recycling: bool | None = None
    positions: str | None = None
    score_before_layer: bool = False
    recycle_ratio: float = RECYCLE_RATIO
    v2_heads: int = V2_HEADS

    name = "sparsevlm"

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"sparsevlm: unknown version {self.version!r}; valid: {', '.join(VERSIONS)}")
        recycling, positions = VERSION_DEFAULTS[self.version]
        self.recycling = recycling if self.recycling is None else bool(self.recycling)
        self.positions = positions if self.positions is None else self.positions
        self.keeps_original_positions()  # rejects an unknown ``positions``
        if self.v2_heads < 1:
            raise ValueError(f"sparsevlm: v2_heads must be >= 1, got {self.v2_heads}")
        if not 0.0 < self.recycle_ratio <= 1.0:
            raise ValueError(f"sparsevlm: recycle_ratio must lie in (0, 1], got {self.recycle_ratio}")
        self.prune_layers = tuple(self.prune_layers)
        budgets = STAGE_BUDGET_PRESETS[self.version][192] if self.stage_budgets is None else self.stage_budgets
        self.stage_budgets = tuple(budgets)
        if any(b < 1 for b in self.stage_budgets):
            raise ValueError(f"sparsevlm: stage_budgets must be >= 1, got {list(self.stage_budgets)}")
        validate_stages("sparsevlm", self.prune_layers, self.stage_budgets, ("prune_layers", "stage_budgets"))

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The engine's boundaries: after each layer of ``prune_layers`` (official), or before it."""
        return tuple(layer + (0 if self.score_before_layer else 1) for layer in self.prune_layers)

    def stage_counts(self, span: int) -> list[tuple[int, int]]:
        """``(kept by score, cluster tokens)`` per stage for a span of ``span`` tokens: ``min(budget, live - 1)``
        (``score.py`` l.35) and the recycling count (0 without recycling); ``live`` = their sum after it."""
        counts, live = [], span
        for budget in self.stage_budgets:
            kept = min(budget, live - 1)
            clusters = recycled_and_cluster_counts(live - kept, self.recycle_ratio)[1] if self.recycling else 0
            counts.append((kept, clusters))
            live = kept + clusters
        return counts

    def schedule(self, span: int) -> list[tuple[int, int]]:
        counts = self.stage_counts(span)
        return [(layer, kept + clusters) for layer, (kept, clusters) in zip(self.boundaries, counts, strict=True)]

    def validate(
        self, num_layers: int, span: int | None, num_heads: int | None = None, hidden_size: int | None = None
    ) -> None:
        """The common checks, and that every stage keeps at least one token by score."""
        if span is not None and any(kept < 1 for kept, _ in self.stage_counts(span)):
            raise ValueError(
                f"sparsevlm: a span of {span} tokens is too short for {len(self.stage_budgets)} stages: every "
                "stage keeps min(budget, live - 1) tokens by score, and one would keep none"
            )
        super().validate(num_layers, span, num_heads, hidden_size)

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        """The stage's ``min(budget, live - 1)`` best tokens by rater attention, plus the cluster tokens with
        recycling: ``keep`` tokens in all, as ``schedule`` planned them."""
        rows, weights = rater_rows(step)
        probs = step.attention(step.layer - 1, rows)  # [B, H, Q, N]
        index = step.span_index[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
        span_attention = probs.gather(-1, index)  # [B, H, Q, S]
        if self.version == "v2":
            span_attention = self._corrected_top_heads(step, rows, weights, span_attention)
        scores = rater_span_scores(span_attention, weights)
        kept = top_r_sorted(scores, min(self.stage_budgets[step.stage], scores.shape[1] - 1))  # score.py l.35
        metadata = {
            "method": "sparsevlm",
            "version": self.version,
            "stage": step.stage,
            "scoring_layer": step.layer - 1,
            "raters": (weights > 0).sum(dim=1),
            "kept_by_score": kept,
        }
        if not self.recycling:
            return TokenSelection(kept, scores, metadata)
        return self._recycle(step, scores, kept, metadata)

    def _corrected_top_heads(
        self, step: PruneStep, rows: torch.Tensor, weights: torch.Tensor, span_attention: torch.Tensor
    ) -> torch.Tensor:
        """SparseVLM+: the attention divided by the RoPE-only logit, restricted to the ``v2_heads`` heads of most
        corrected rater attention (v2.0 MSL l.242-257)."""
        cos, sin = step.rope
        bias = rope_logit_bias(
            (gather_rows(cos, rows), gather_rows(sin, rows)),
            (gather_rows(cos, step.span_index), gather_rows(sin, step.span_index)),
        )
        corrected = span_attention / bias[:, None]
        heads = top_rater_heads(corrected, weights, self.v2_heads)
        return corrected.gather(1, heads[:, :, None, None].expand(-1, -1, *corrected.shape[2:]))

    def _recycle(self, step: PruneStep, scores: torch.Tensor, kept: torch.Tensor, metadata: dict) -> TokenSelection:
        """The kept tokens plus the cluster tokens of the best pruned ones, laid out as ``positions`` needs."""
        span_hidden = gather_rows(step.hidden_states, step.span_index)
        at_centres = self.keeps_original_positions()
        per_sample, centres = [], []
        for b in range(scores.shape[0]):
            sample_centres, merged = recycle_pruned_tokens(scores[b], span_hidden[b], kept[b], self.recycle_ratio)
            per_sample.append(cluster_layout(kept[b], sample_centres, merged, span_hidden[b], at_centres))
            centres.append(sample_centres)
        slots, labels, sources, content = (torch.stack(parts) for parts in zip(*per_sample, strict=True))
        columns = replacement_columns(slots, labels)
        centres = torch.stack(centres)  # [B, C]: equal spans give every sample the same count
        metadata["cluster_tokens"] = centres.shape[1]
        metadata["cluster_centres"] = centres
        metadata["cluster_layout"] = "centres" if at_centres else "after_kept"
        replacement = (columns, gather_rows(content, columns))
        return TokenSelection(slots, scores, metadata, replacement=replacement, sources=sources)

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> SparseVLM:
        """The version's official preset for a published budget (192 / 128 / 96 / 64) on a 576-token span;
        otherwise the nearest preset scaled so that our equivalent tokens cost ``target_tokens`` (ours)."""
        method = cls.from_params(without_budget_fields(cls, params, ("stage_budgets",)))
        presets = STAGE_BUDGET_PRESETS[method.version]
        if span == OFFICIAL_SPAN and target_tokens in presets:
            return dataclasses.replace(method, stage_budgets=presets[target_tokens])
        nearest = presets[min(presets, key=lambda budget: abs(budget - target_tokens))]
        return dataclasses.replace(method, stage_budgets=scaled_stage_budgets(method, target_tokens, num_layers, span, nearest))


def kept_by_score_positions(record: PruningRecord, sample: int = 0) -> list[list[int]]:
    """Per stage, the positions in the unpruned input of the span tokens ``sample`` kept by score (a cluster
    token that a later stage keeps is left out), from the stages' ``kept_by_score`` and cluster metadata.

    The record's ``kept_index`` labels a cluster token with its centre; this leaves cluster tokens out.
    """
    start, end = (int(x) for x in record.span[sample])
    labels, per_stage = list(range(start, end)), []
    for stage in record.stages:
        metadata = stage.metadata
        kept = metadata["kept_by_score"][sample]
        kept_labels = [labels[column] for column in kept]
        per_stage.append([label for label in kept_labels if label >= 0])
        centres = metadata.get("cluster_centres", [[]] * (sample + 1))[sample]
        if metadata.get("cluster_layout") == "centres":
            kept_set = set(kept)
            labels = [labels[column] if column in kept_set else -1 for column in sorted(kept + centres)]
        else:
            labels = kept_labels + [-1] * len(centres)
    return per_stage


def scaled_stage_budgets(
    method: SparseVLM, target_tokens: float, num_layers: int, span: int, preset: tuple[int, ...]
) -> tuple[int, ...]:
    """``preset`` scaled by the factor (bisection) whose schedule under ``method`` costs ``target_tokens``
    equivalent tokens (ours: the official code publishes presets for 576 tokens only)."""
    check_budget_reachable("sparsevlm", target_tokens, num_layers, span, method.boundaries[0])

    def budgets(factor: float) -> tuple[int, ...]:
        return tuple(min(span, max(1, round(b * factor))) for b in preset)

    def cost(factor: float) -> float:
        schedule = dataclasses.replace(method, stage_budgets=budgets(factor)).schedule(span)
        return equivalent_tokens(span_tokens_per_layer(num_layers, span, schedule))

    return budgets(bisect_for_target(cost, target_tokens, 0.0, span / min(preset)))

"""Fine-grained head selection for FastV ("FinePruner"): score heads, keep ``H``, aggregate their attention.

Input everywhere is ``attn`` ``[B, H_total, S]``: the attention of the selection query (the last prompt
token) over the span tokens, per head (``a_h`` in docs/methods.md, "FastV fine-grained heads"). Some strategies look at the
head's *distribution* ``p_h = softmax(a_h)`` over the span (as the design says; note that the softmax of
probabilities is close to uniform, so those scores differ between heads by small amounts, and every
strategy that mixes terms min-max normalises them across heads first).

Head strategies (higher score = better head):

* ``sum``: ``sum_j a_h[j]``;  ``variance``: ``var(a_h)``;  ``max_attention``: ``max(a_h)``;
  ``attention_range``: ``max(a_h) - min(a_h)``;  ``top_k_sum``: sum of the ``min(64, S // 4)`` largest;
  ``weighted_quality``: ``max(a_h) * var(a_h)``;  ``gini``: Gini coefficient of ``a_h``.
* ``sparsity``: ``sum_j p_h[j]^2``.
* ``entropy``: ``-|E(p_h) - mean_h E(p_h)|`` (closeness of the head's entropy to the mean entropy).
* ``multi_objective``: ``0.4 (0.7 n(E) + 0.3 n(kurtosis)) + 0.3 n(1 - mean cos(a_h, a_other))
  + 0.3 n(sparsity)`` with ``n`` = min-max over heads and kurtosis ``E[(p - mu)^4] / var^2`` of ``p_h``.
  Choice: the diversity term uses the cosine similarity of the raw rows ``a_h`` (the softmaxed rows are
  almost parallel) and "inverse" is read as ``1 - mean similarity``.
* ``graph_based``: node features ``[sparsity, entropy, max, variance, fraction above mean]`` of ``p_h``,
  each min-max normalised over heads (choice: so no feature dominates by scale); adjacency = cosine
  similarity of ``p_h`` where > 0.1, no self loops, row-normalised; two rounds of ``x <- relu(x + A x)``;
  score = mean of the features.
* ``hierarchical``: coarse stage keeps ``min(H_total, max(2H, H + 4))`` heads by
  ``0.6 n(sparsity) + 0.4 (1 - n(entropy))``; the fine stage ranks them by ``0.3 n(entropy) + 0.25 n(KL(p_h
  || uniform)) + 0.25 n(||p_h - mean_h p_h||) + 0.2 n(1 / std(p_h))`` (normalised within the coarse set).
  Choice: "few heads" means the coarse set holds no more than ``H`` heads (the fine stage has nothing to
  choose); then the score is ``0.5 n(sparsity) + 0.3 n(max) + 0.2 n(variance)``. Heads outside the
  coarse set score ``-inf``.

Scores are computed in float64: the softmax of attention probabilities is nearly uniform, and in float32
the differences between heads fall below rounding, so batch and single runs could pick different heads.

Selected heads are the ``H`` best (stable order, ties to the lower head index); token scores are
``sum_{h in selected} w_h a_h`` with ``w = softmax(selected head scores)``; the ``R`` best tokens are kept.

The dynamic selector (``ablation_a``) picks a strategy and a head count per sample in three steps, see
``dynamic_candidates``, ``estimate_head_count`` and ``selection_quality``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.selection import TokenSelection, top_r_sorted

HEAD_STRATEGIES = (
    "sum",
    "variance",
    "entropy",
    "max_attention",
    "attention_range",
    "sparsity",
    "top_k_sum",
    "weighted_quality",
    "gini",
    "multi_objective",
    "graph_based",
    "hierarchical",
)
_EPS = 1e-12


def validate_head_selection(strategy: str, heads: int, total_heads: int | None = None) -> None:
    """Raise a ``ValueError`` naming the valid options for an unknown strategy or a head count out of range."""
    if strategy not in HEAD_STRATEGIES:
        raise ValueError(f"unknown head selection strategy {strategy!r}; valid: {', '.join(HEAD_STRATEGIES)}")
    upper = "the number of attention heads" if total_heads is None else str(total_heads)
    if heads < 1 or (total_heads is not None and heads > total_heads):
        raise ValueError(f"cannot select {heads} heads: valid range is [1, {upper}]")


def min_max_normalise(values: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)`` along the last dim; a constant row maps to zeros."""
    low = values.min(dim=-1, keepdim=True).values
    high = values.max(dim=-1, keepdim=True).values
    return (values - low) / (high - low).clamp_min(_EPS)


def distribution_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``-sum p log p`` along the last dim."""
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim=-1)


def distribution_sparsity(probs: torch.Tensor) -> torch.Tensor:
    """``sum p^2`` along the last dim (1 for one-hot, 1/S for uniform)."""
    return probs.pow(2).sum(dim=-1)


def distribution_kurtosis(values: torch.Tensor) -> torch.Tensor:
    """``E[(x - mu)^4] / var^2`` along the last dim (0 for a constant row)."""
    centred = values - values.mean(dim=-1, keepdim=True)
    variance = centred.pow(2).mean(dim=-1)
    return centred.pow(4).mean(dim=-1) / variance.pow(2).clamp_min(_EPS)


def gini_coefficient(values: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values along the last dim: 0 = equal, (n - 1)/n = one-hot."""
    ordered = values.sort(dim=-1).values
    n = values.shape[-1]
    rank = torch.arange(1, n + 1, device=values.device, dtype=values.dtype)
    total = ordered.sum(dim=-1).clamp_min(_EPS)
    return 2.0 * (ordered * rank).sum(dim=-1) / (n * total) - (n + 1) / n


def cosine_similarity_matrix(rows: torch.Tensor) -> torch.Tensor:
    """``[..., H, H]`` cosine similarity between the rows of ``[..., H, S]``."""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return unit @ unit.transpose(-1, -2)


def mean_similarity_to_others(rows: torch.Tensor) -> torch.Tensor:
    """``[..., H]`` mean cosine similarity of each row to the other rows (0 with a single row)."""
    heads = rows.shape[-2]
    if heads == 1:
        return rows.new_zeros(rows.shape[:-1])
    similarity = cosine_similarity_matrix(rows)
    diagonal = similarity.diagonal(dim1=-2, dim2=-1)
    return (similarity.sum(dim=-1) - diagonal) / (heads - 1)


def _multi_objective(attn: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    richness = 0.7 * min_max_normalise(distribution_entropy(probs)) + 0.3 * min_max_normalise(
        distribution_kurtosis(probs)
    )
    diversity = min_max_normalise(1.0 - mean_similarity_to_others(attn))
    return 0.4 * richness + 0.3 * diversity + 0.3 * min_max_normalise(distribution_sparsity(probs))


def _graph_based(probs: torch.Tensor) -> torch.Tensor:
    above_mean = (probs > probs.mean(dim=-1, keepdim=True)).float().mean(dim=-1)
    raw = [
        distribution_sparsity(probs),
        distribution_entropy(probs),
        probs.max(dim=-1).values,
        probs.var(dim=-1, unbiased=False),
        above_mean,
    ]
    features = torch.stack([min_max_normalise(f) for f in raw], dim=-1)  # [B, H, 5]
    similarity = cosine_similarity_matrix(probs)
    eye = torch.eye(similarity.shape[-1], dtype=torch.bool, device=similarity.device)
    adjacency = torch.where((similarity > 0.1) & ~eye, similarity, torch.zeros_like(similarity))
    adjacency = adjacency / adjacency.sum(dim=-1, keepdim=True).clamp_min(_EPS)
    for _ in range(2):
        features = torch.relu(features + adjacency @ features)
    return features.mean(dim=-1)


def _hierarchical(attn: torch.Tensor, probs: torch.Tensor, heads: int) -> torch.Tensor:
    total = attn.shape[1]
    sparsity = distribution_sparsity(probs)
    entropy = distribution_entropy(probs)
    coarse_size = min(total, max(2 * heads, heads + 4))
    if coarse_size <= heads:
        return (
            0.5 * min_max_normalise(sparsity)
            + 0.3 * min_max_normalise(attn.max(dim=-1).values)
            + 0.2 * min_max_normalise(attn.var(dim=-1, unbiased=False))
        )
    coarse_score = 0.6 * min_max_normalise(sparsity) + 0.4 * (1.0 - min_max_normalise(entropy))
    coarse = coarse_score.sort(dim=-1, descending=True, stable=True).indices[:, :coarse_size]  # [B, C]
    kept_probs = probs.gather(1, coarse[:, :, None].expand(-1, -1, probs.shape[-1]))  # [B, C, S]
    span = probs.shape[-1]
    kl_to_uniform = (kept_probs * (kept_probs.clamp_min(_EPS) * span).log()).sum(dim=-1)
    distance = (kept_probs - kept_probs.mean(dim=1, keepdim=True)).norm(dim=-1)
    inverse_std = 1.0 / kept_probs.std(dim=-1, unbiased=False).clamp_min(_EPS)
    fine = (
        0.3 * min_max_normalise(entropy.gather(1, coarse))
        + 0.25 * min_max_normalise(kl_to_uniform)
        + 0.25 * min_max_normalise(distance)
        + 0.2 * min_max_normalise(inverse_std)
    )
    scores = torch.full_like(sparsity, float("-inf"))
    return scores.scatter(1, coarse, fine)


def head_scores(attn: torch.Tensor, strategy: str, heads: int) -> torch.Tensor:
    """``[B, H_total]`` score of every head by ``strategy`` (module docstring); ``heads`` = H to select."""
    validate_head_selection(strategy, heads, attn.shape[1])
    attn = attn.double()
    probs = attn.softmax(dim=-1)
    if strategy == "sum":
        return attn.sum(dim=-1)
    if strategy == "variance":
        return attn.var(dim=-1, unbiased=False)
    if strategy == "max_attention":
        return attn.max(dim=-1).values
    if strategy == "attention_range":
        return attn.max(dim=-1).values - attn.min(dim=-1).values
    if strategy == "entropy":
        entropy = distribution_entropy(probs)
        return -(entropy - entropy.mean(dim=-1, keepdim=True)).abs()
    if strategy == "sparsity":
        return distribution_sparsity(probs)
    if strategy == "top_k_sum":
        k = max(1, min(64, attn.shape[-1] // 4))
        return attn.topk(k, dim=-1).values.sum(dim=-1)
    if strategy == "weighted_quality":
        return attn.max(dim=-1).values * attn.var(dim=-1, unbiased=False)
    if strategy == "gini":
        return gini_coefficient(attn)
    if strategy == "multi_objective":
        return _multi_objective(attn, probs)
    if strategy == "graph_based":
        return _graph_based(probs)
    return _hierarchical(attn, probs, heads)


@dataclass
class HeadChoice:
    """Selected heads ``[B, H]`` (best first), their weights ``[B, H]`` and the token scores ``[B, S]``."""

    head_index: torch.Tensor
    head_weights: torch.Tensor
    token_scores: torch.Tensor


def aggregate_best_heads(attn: torch.Tensor, scores: torch.Tensor, heads: int) -> HeadChoice:
    """Keep the ``heads`` best-scoring heads and average their rows weighted by ``softmax(score)``."""
    order = scores.sort(dim=-1, descending=True, stable=True).indices[:, :heads]  # [B, H]
    weights = scores.gather(1, order).softmax(dim=-1)
    rows = attn.double().gather(1, order[:, :, None].expand(-1, -1, attn.shape[-1]))  # [B, H, S]
    return HeadChoice(order, weights, (weights[:, :, None] * rows).sum(dim=1))


def choose_heads(attn: torch.Tensor, heads: int, strategy: str) -> HeadChoice:
    """FastV with fine-grained heads: the ``heads`` best heads of ``strategy`` and the token scores they give."""
    return aggregate_best_heads(attn, head_scores(attn, strategy, heads), heads)


# ----- dynamic selection (ablation_a) ---------------------------------------------------------------
def dynamic_candidates(keep: int) -> tuple[tuple[str, ...], tuple[int, int]]:
    """Step 1, resource-aware candidates by the keep count R: ``(strategies, (min heads, max heads))``.

    R >= 166: {sparsity, hierarchical}, (14, 26); R >= 98: {sparsity, hierarchical, top_k_sum,
    max_attention}, (8, 26); otherwise {graph_based, multi_objective, attention_range}, (6, 18).
    """
    if keep >= 166:
        return ("sparsity", "hierarchical"), (14, 26)
    if keep >= 98:
        return ("sparsity", "hierarchical", "top_k_sum", "max_attention"), (8, 26)
    return ("graph_based", "multi_objective", "attention_range"), (6, 18)


def clamp_head_range(head_range: tuple[int, int], total_heads: int) -> tuple[int, int]:
    """The candidate head range limited to the layer's heads (choice: both ends capped at ``total_heads``)."""
    return min(head_range[0], total_heads), min(head_range[1], total_heads)


def estimate_head_count(scores: torch.Tensor, head_range: tuple[int, int]) -> int:
    """Step 2: median of three head counts read off one sample's head scores ``[H_total]``, clamped to the range.

    * first significant gap in the descending scores (gap > mean + 0.8 std of the gaps; none: all heads);
    * heads scoring above ``mean - 0.3 std``;
    * heads needed to reach 85% of the cumulative score (scores shifted to start at 0; all equal: all heads).
    """
    finite = scores[torch.isfinite(scores)]
    total = finite.numel()
    ordered = finite.sort(descending=True).values
    if total > 1:
        gaps = ordered[:-1] - ordered[1:]
        significant = (gaps > gaps.mean() + 0.8 * gaps.std(unbiased=False)).nonzero()
        by_gap = int(significant[0, 0]) + 1 if significant.numel() else total
    else:
        by_gap = total
    by_spread = int((finite > finite.mean() - 0.3 * finite.std(unbiased=False)).sum())
    shifted = ordered - ordered.min()
    if shifted.sum() > 0:
        cumulative = shifted.cumsum(dim=0) / shifted.sum()
        by_mass = int((cumulative < 0.85).sum()) + 1
    else:
        by_mass = total
    median = sorted((by_gap, by_spread, by_mass))[1]
    low, high = head_range
    return max(low, min(high, median))


def selection_quality(attn: torch.Tensor, scores: torch.Tensor, choice: HeadChoice) -> float:
    """Step 3, quality of one sample's (strategy, heads): ``0.3 diversity + 0.3 score quality + 0.4 attention``.

    ``attn``: ``[H_total, S]``; ``scores``: ``[H_total]``; ``choice`` for this sample (batch of 1).
    diversity = 1 - mean pairwise cosine similarity of the selected rows ``a_h`` (0 for one head);
    score quality = (std + range) / 2 of the selected heads' min-max normalised scores;
    attention quality = variance * max of the aggregated distribution ``sum_h w_h a_h``.
    """
    head_index = choice.head_index[0]
    rows = attn.double()[head_index]
    diversity = 1.0 - mean_similarity_to_others(rows).mean() if len(head_index) > 1 else rows.new_zeros(())
    finite = torch.isfinite(scores)
    normalised = min_max_normalise(torch.where(finite, scores, scores[finite].min()))[head_index]
    score_quality = (normalised.std(unbiased=False) + normalised.max() - normalised.min()) / 2.0
    aggregated = choice.token_scores[0]
    attention_quality = aggregated.var(unbiased=False) * aggregated.max()
    return float(0.3 * diversity + 0.3 * score_quality + 0.4 * attention_quality)


def select_tokens_dynamic(attn: torch.Tensor, keep: int) -> TokenSelection:
    """``ablation_a``: per sample, pick the best (strategy, head count) of ``dynamic_candidates(keep)``.

    Metadata lists the chosen strategy, head count and quality per sample (the debug log's content).
    A search on the host, the one selection that reads the device as it goes: each candidate's head count
    sets the shapes that follow (and ``hierarchical``'s coarse set) and the candidates' qualities are compared
    in Python (per sample and candidate: three counts, one quality).
    """
    strategies, head_range = dynamic_candidates(keep)
    head_range = clamp_head_range(head_range, attn.shape[1])
    rows, chosen_strategy, chosen_heads, chosen_quality = [], [], [], []
    for sample in attn.double():
        best: tuple[float, str, int, HeadChoice] | None = None
        for strategy in strategies:
            scores = head_scores(sample[None], strategy, head_range[0])
            heads = estimate_head_count(scores[0], head_range)
            if strategy == "hierarchical" and heads != head_range[0]:
                scores = head_scores(sample[None], strategy, heads)
            choice = aggregate_best_heads(sample[None], scores, heads)
            quality = selection_quality(sample, scores[0], choice)
            if best is None or quality > best[0]:
                best = (quality, strategy, heads, choice)
        quality, strategy, heads, choice = best
        rows.append(choice.token_scores)
        chosen_strategy.append(strategy)
        chosen_heads.append(heads)
        chosen_quality.append(round(quality, 6))
    token_scores = torch.cat(rows)
    metadata = {
        "method": "ablation_a",
        "candidates": list(strategies),
        "head_range": list(head_range),
        "head_strategy": chosen_strategy,
        "heads": chosen_heads,
        "quality": chosen_quality,
    }
    return TokenSelection(top_r_sorted(token_scores, keep), token_scores, metadata)

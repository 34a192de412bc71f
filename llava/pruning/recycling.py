"""Token recycling (SparseVLM v1.5): pruned tokens merged into a few cluster tokens instead of dropped.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
section "token recycling": of the tokens a stage prunes, the ``ratio`` (30%) with the highest scores are
recycled; they are grouped by density-peak clustering into ``recycled // 10 + 1`` clusters and each
cluster becomes one token, the mean of its members' hidden states.

Density peaks (Rodriguez & Laio, 2014, with the k-nearest-neighbour density of DPC-KNN, Du et al., 2016),
on ``dist_ij = ||x_i - x_j|| / sqrt(d)``:

* density ``rho_i = exp(-mean_{j in kNN(i)} dist_ij^2)`` (``k = min(neighbours, n - 1)``, self excluded);
* separation ``delta_i = min_{j denser than i} dist_ij`` (the densest point: ``max_j dist_ij``);
* centres: the ``c`` largest ``rho_i * delta_i``; every point joins its nearest centre.

Choices where the paper leaves one: equal densities are ordered by index (no random noise, so a batch
gives the same clusters as a single sample); ``recycled = round(ratio * pruned)``; the stage budget
counts the cluster tokens, so ``kept + clusters = budget`` (``kept_count_with_recycling``).
"""

from __future__ import annotations

import torch

CLUSTER_DIVISOR = 10


def recycled_and_cluster_counts(pruned: int, ratio: float) -> tuple[int, int]:
    """``(recycled, clusters)`` for a stage that prunes ``pruned`` tokens: ``round(ratio * pruned)`` and
    ``recycled // 10 + 1`` (0 and 0 when nothing is recycled)."""
    recycled = round(ratio * pruned)
    return (recycled, recycled // CLUSTER_DIVISOR + 1) if recycled > 0 else (0, 0)


def kept_count_with_recycling(span: int, budget: int, ratio: float) -> int:
    """Tokens to keep by score so that kept + cluster tokens = ``budget`` out of ``span`` live tokens.

    ``kept + clusters(span - kept)`` falls by 0 or 1 for each token fewer kept, so the largest ``kept``
    that fits reaches ``budget`` exactly, and budgets below ``1 + clusters(span - 1)`` cannot be met.
    """
    if not 0 < budget <= span:
        raise ValueError(f"cannot keep {budget} tokens out of a span of {span}: valid range is [1, {span}]")
    for kept in range(budget, 0, -1):
        if kept + recycled_and_cluster_counts(span - kept, ratio)[1] <= budget:
            return kept
    smallest = 1 + recycled_and_cluster_counts(span - 1, ratio)[1]  # the sum is smallest at kept = 1
    raise ValueError(f"token recycling cannot fit kept and cluster tokens into a budget of {budget} out of "
                     f"{span} tokens: the smallest budget that works is {smallest}")


def density_peak_clusters(features: torch.Tensor, clusters: int, neighbours: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering of ``features`` ``[n, d]`` into ``clusters`` groups.

    Returns ``(centres [clusters], assignment [n])``: centre indices into ``features`` (ascending) and,
    per point, the position in ``centres`` of the cluster it joins (every centre joins its own).
    """
    n = features.shape[0]
    if not 0 < clusters <= n:
        raise ValueError(f"cannot form {clusters} clusters from {n} points: valid range is [1, {n}]")
    x = features.double()
    dist = torch.cdist(x, x) / x.shape[-1] ** 0.5  # [n, n]
    k = min(neighbours, n - 1)
    if k > 0:
        nearest = dist.topk(k + 1, dim=-1, largest=False).values[:, 1:]  # drop self (distance 0)
        density = (-(nearest**2).mean(dim=-1)).exp()
    else:
        density = torch.ones(n, dtype=x.dtype)
    order = torch.arange(n)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (order[None, :] < order[:, None])
    )  # denser[i, j]: j is denser than i
    separation = dist.masked_fill(~denser, float("inf")).min(dim=-1).values
    separation = torch.where(denser.any(dim=-1), separation, dist.max(dim=-1).values)
    score = density * separation
    centres = score.sort(descending=True, stable=True).indices[:clusters].sort().values
    to_centres = dist[:, centres].clone()
    to_centres[centres, torch.arange(clusters)] = -1.0  # a centre joins its own cluster, even among duplicates
    return centres, to_centres.argmin(dim=-1)


def merge_clusters(hidden: torch.Tensor, assignment: torch.Tensor, clusters: int) -> torch.Tensor:
    """``[clusters, d]`` mean hidden state of each cluster's members (``hidden`` ``[n, d]``, ``assignment`` ``[n]``)."""
    sums = hidden.new_zeros(clusters, hidden.shape[-1]).index_add_(0, assignment, hidden)
    counts = torch.bincount(assignment, minlength=clusters).to(hidden.dtype)
    return sums / counts[:, None]


def recycle_pruned_tokens(
    scores: torch.Tensor, hidden: torch.Tensor, kept: torch.Tensor, ratio: float, neighbours: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recycle one sample's pruned span tokens into cluster tokens placed at their centres' slots.

    ``scores`` ``[S]`` and ``hidden`` ``[S, d]`` of the live span tokens; ``kept`` ``[R]`` indices kept by
    score. Returns ``(indices, columns, merged)``: every span token that stays (kept and cluster
    centres) ascending ``[R + C]``, the columns of ``indices`` that hold cluster tokens ``[C]``, and their
    hidden states ``[C, d]``.
    """
    pruned_mask = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    pruned_mask[kept] = False
    pruned = pruned_mask.nonzero()[:, 0]
    recycled_count, cluster_count = recycled_and_cluster_counts(pruned.numel(), ratio)
    if cluster_count == 0:
        empty = kept.new_zeros(0)
        return kept, empty, hidden.new_zeros(0, hidden.shape[-1])
    recycled = pruned[scores[pruned].sort(descending=True, stable=True).indices[:recycled_count]]
    centres, assignment = density_peak_clusters(hidden[recycled], cluster_count, neighbours)
    merged = merge_clusters(hidden[recycled], assignment.to(hidden.device), cluster_count)
    indices, order = torch.cat([kept, recycled[centres]]).sort()
    columns = (order >= kept.numel()).nonzero()[:, 0]
    return indices, columns, merged[order[columns] - kept.numel()]

"""Token recycling (SparseVLM v1.5): the best pruned tokens merged into a few cluster tokens instead of dropped.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
as the official code does it: Gumpest/SparseVLMs, branch ``v1.5`` at 734d9003879689713a132b83297dfad060a5c9af,
``llava/model/language_model/modelling_sparse_llama.py`` (MSL) and ``utils.py``:

* counts (MSL l.286-294): of the ``p`` span tokens a stage prunes, the ``int(0.3 p) + 1`` with the highest
  scores are recycled (``topk`` of their scores, MSL l.289) and grouped into ``int(recycled / 10) + 1``
  clusters;
* clustering (``cluster_and_merge``, utils.py l.247-280; density peaks, Rodriguez & Laio 2014, with the
  k-nearest-neighbour density of DPC-KNN, Du et al. 2016), on ``dist_ij = ||x_i - x_j|| / sqrt(d)``:
  density ``rho_i = exp(-mean of the k smallest dist_ij^2)`` with ``k`` = the cluster count, the point
  itself (distance 0) included (l.256-257); separation ``delta_i = min dist_ij`` over the strictly denser
  ``j``, or the largest distance of the whole matrix for a point that has none (l.263-266); centres: the
  ``c`` largest ``rho_i * delta_i``, in that (descending) order (l.269-270); every point joins its nearest
  centre, the earlier centre on a tie (``argmin``), every centre its own cluster (l.273-280);
* merging (l.284-309): a cluster token is the sum of its members' hidden states divided by
  ``members + 1e-6``.

Where the official code is random or loose: it adds uniform noise of at most 1e-6 to the densities (l.259-260)
so that ties are broken at random; we add none (deterministic, so a batch equals its single samples), so
tied densities are not denser than each other, as in its comparison. It computes in the model's dtype
(float16), we in float64. ``topk`` ties (recycled tokens, centres) go to the lower index here (stable sort);
the official order on ties is unspecified.

Every count here follows from the span and the kept count (host integers), so nothing reads the device: the
pruned tokens are listed by a stable sort of the mask (``ascending_true``), not ``nonzero`` (whose size CUDA
must read back), and cluster sizes are counted by ``index_add_``, not ``bincount`` (which reads its maximum).
"""

from __future__ import annotations

import torch

RECYCLE_RATIO = 0.3
CLUSTER_DIVISOR = 10
MERGE_EPS = 1e-6


def recycled_and_cluster_counts(pruned: int, ratio: float = RECYCLE_RATIO) -> tuple[int, int]:
    """``(recycled, clusters)`` for a stage that prunes ``pruned`` tokens: ``int(ratio * pruned) + 1`` and
    ``int(recycled / 10) + 1`` (MSL l.288, l.292); ``(0, 0)`` when nothing is pruned (MSL l.281)."""
    if pruned <= 0:
        return 0, 0
    recycled = int(pruned * ratio) + 1
    return recycled, int(recycled / CLUSTER_DIVISOR) + 1


def ascending_true(mask: torch.Tensor, count: int) -> torch.Tensor:
    """``[count]`` indices of the True entries of a 1-d ``mask`` that holds ``count`` of them, ascending:
    ``mask.nonzero()[:, 0]`` with its size known beforehand (a stable sort puts the True entries first)."""
    return (~mask).to(torch.uint8).argsort(stable=True)[:count]


def density_peak_clusters(features: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering of ``features`` ``[n, d]`` into ``clusters`` groups (utils.py l.247-280).

    Returns ``(centres [clusters], assignment [n])``: centre indices into ``features`` in the official order
    (descending ``rho * delta``) and, per point, the position in ``centres`` of the cluster it joins.
    """
    n = features.shape[0]
    if not 0 < clusters <= n:
        raise ValueError(f"cannot form {clusters} clusters from {n} points: valid range is [1, {n}]")
    x = features.double()
    dist = torch.cdist(x, x) / x.shape[-1] ** 0.5  # [n, n]
    nearest = dist.topk(clusters, dim=-1, largest=False).values  # k = clusters, the point itself included
    density = (-(nearest**2).mean(dim=-1)).exp()
    denser = density[None, :] > density[:, None]  # denser[i, j]: j is strictly denser than i
    separation = dist.masked_fill(~denser, float("inf")).min(dim=-1).values.clamp_max(dist.max())
    centres = (density * separation).sort(descending=True, stable=True).indices[:clusters]
    assignment = dist[centres].argmin(dim=0)  # [n]: the nearest centre, the earlier one on a tie
    assignment[centres] = torch.arange(clusters, device=x.device)
    return centres, assignment


def merge_clusters(hidden: torch.Tensor, assignment: torch.Tensor, clusters: int) -> torch.Tensor:
    """``[clusters, d]``: each cluster's summed members over ``members + 1e-6`` (utils.py l.298-309)."""
    sums = hidden.new_zeros(clusters, hidden.shape[-1]).index_add_(0, assignment, hidden)
    members = torch.zeros(clusters, dtype=torch.long, device=assignment.device)
    counts = members.index_add_(0, assignment, torch.ones_like(assignment)).to(hidden.dtype)
    return sums / (counts[:, None] + MERGE_EPS)


def recycle_pruned_tokens(
    scores: torch.Tensor, hidden: torch.Tensor, kept: torch.Tensor, ratio: float = RECYCLE_RATIO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster tokens of one sample's best pruned span tokens (MSL l.281-296).

    ``scores`` ``[S]`` and ``hidden`` ``[S, d]`` of the live span tokens; ``kept`` ``[R]`` indices kept by
    score. Returns ``(centres, merged)``: the span index of each cluster's centre ``[C]`` and the cluster
    tokens ``[C, d]``, in the official order (descending centre score); both empty when nothing is pruned.
    """
    pruned_mask = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    pruned_mask[kept] = False
    pruned = ascending_true(pruned_mask, scores.shape[0] - kept.numel())
    recycled_count, cluster_count = recycled_and_cluster_counts(pruned.numel(), ratio)
    if cluster_count == 0:
        return kept.new_zeros(0), hidden.new_zeros(0, hidden.shape[-1])
    recycled = pruned[scores[pruned].sort(descending=True, stable=True).indices[:recycled_count]]
    centres, assignment = density_peak_clusters(hidden[recycled], cluster_count)
    return recycled[centres.to(recycled.device)], merge_clusters(hidden[recycled], assignment.to(hidden.device), cluster_count)

"""CDPruner's token choice: a conditional DPP over the visual tokens, solved by greedy MAP.

Zhang et al., 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
in MLLMs" (CDPruner). Similarity ``S = cos(f_i, f_j)`` of the (projected) image features; relevance to
the instruction ``r_i = minmax(mean_t(-cos(f_i, e_t)))`` over the instruction's embeddings ``e_t``
(the sign as in DESIGN.md section 4); kernel ``L = diag(r) S diag(r)``. The ``T`` tokens maximising
``det(L_Y)`` are approximated greedily with the incremental Cholesky update of Chen et al., 2018
("Fast Greedy MAP Inference for Determinantal Point Process"), O(T^2 N).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., N, M]`` cosine similarity of the rows of ``a`` ``[..., N, d]`` and ``b`` ``[..., M, d]``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return a @ b.transpose(-1, -2)


def instruction_relevance(image_features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """``[N]`` relevance of each image token: min-max normalised mean over text of ``-cos(image, text)``."""
    relevance = -cosine_matrix(image_features.float(), text_embeddings.float()).mean(dim=-1)
    low, high = relevance.min(), relevance.max()
    return (relevance - low) / (high - low).clamp_min(1e-6)


def conditional_kernel(image_features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``L = diag(r) S diag(r)`` with ``S`` the cosine similarity of the image features, ``[N, N]``."""
    similarity = cosine_matrix(image_features.float(), image_features.float())
    return relevance[:, None] * similarity * relevance[None, :]


RIDGE = 1e-3  # L + RIDGE * max_j L_jj * I: every item keeps a gain, so the greedy is defined past L's rank


def dpp_greedy_map(kernel: torch.Tensor, count: int) -> torch.Tensor:
    """Indices ``[count]`` chosen greedily to maximise ``det(L_Y)``, in the order they were chosen.

    Each step adds the item with the largest marginal gain ``d_j^2 = L_jj - ||c_j||^2`` and updates the
    Cholesky rows ``c`` incrementally (the kernel is handled in float64). The kernel gets a small ridge,
    ``L + eps I`` with ``eps = 1e-3 max_j L_jj``: ``S`` has rank at most the features' width, so a kernel of
    features narrower than the count asked for (the shapes VLM's 64-wide ones at T = 128 / 192) leaves no
    gain after that many picks, and the plain update then divides by a vanishing gain and picks arbitrary
    tokens (measured: identical answers at 128 and 192). With the ridge, picks past the rank still trade
    relevance (``eps`` weighs every item alike, the kernel's ``r_j^2`` does not) against what the chosen
    set already spans; below the rank the order is unchanged but for gains within ``eps`` of each other.
    """
    size = kernel.shape[0]
    if not 0 < count <= size:
        raise ValueError(f"cannot select {count} of {size} items: valid range is [1, {size}]")
    kernel = kernel.double()
    kernel = kernel + RIDGE * float(kernel.diagonal().max().clamp_min(_EPS)) * torch.eye(size, dtype=kernel.dtype, device=kernel.device)
    cholesky = kernel.new_zeros(count, size)
    gains = kernel.diagonal().clone()
    chosen: list[int] = []
    for step in range(count):
        best = int(gains.argmax())
        chosen.append(best)
        gain = gains[best].sqrt()
        row = (kernel[best] - cholesky[:step].T @ cholesky[:step, best]) / gain
        cholesky[step] = row
        gains = gains - row.pow(2)
        gains[chosen] = float("-inf")
    return torch.tensor(chosen, device=kernel.device)

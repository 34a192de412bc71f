"""CDPruner's token choice: a conditional DPP over the visual tokens, solved by greedy MAP.

Zhang et al., 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
in MLLMs" (CDPruner). Official code: Theia-4869/CDPruner at 9541616c, ``llava/model/llava_arch.py``
(``encode_images``), step by step:

* similarity ``S = cos(f_i, f_j)`` of the projected image features, normalised in their own dtype, then
  multiplied in float32 (l.148-153);
* relevance ``r_i = (m_i - min m + 1e-6) / (max m - min m)`` with ``m_i = mean_t(-cos(f_i, e_t))`` over
  the instruction's embeddings ``e_t`` (l.156-160; the official ``f``, ``e`` are CLIP image / text
  embeddings, see ``llava.pruning.methods.cdpruner`` for ours);
* kernel ``L = diag(r) S diag(r)`` (l.167);
* greedy MAP in float32, no ridge (l.170-181): each step picks the largest gain ``d_j^2`` (starting at
  ``L_jj``), appends the Cholesky row ``c = (L_j - C^T C_j) / d_j`` and lowers every gain by ``c^2``
  (Chen et al., 2018, "Fast Greedy MAP Inference for Determinantal Point Process", O(T^2 N));
* the kept tokens are sorted (raster order, l.183-185).

Out of gains (``S`` has rank at most the features' width, so narrow features at a larger ``T`` leave
gains of rounding noise after that many picks): the official code picks on by those noise gains, picks
the first token whose gain is not positive, and then divides by its square root, which turns every gain
into NaN; ``argmax`` then returns the lowest NaN index and, the NaN having erased the chosen marks, it
alternates between tokens 0 and 1, so it keeps fewer than ``T`` distinct tokens. We do the same picks
with the same float32 arithmetic up to and including that one, then fill the remaining slots with the
lowest-indexed tokens not yet kept (what that ``argmax`` would return with the marks intact): a keep set
of ``T`` tokens that contains the official one, equal to it whenever the greedy never runs out of gains.

The greedy runs on the kernel's device without reading a value back: each pick is a 0-d index tensor
(``argmax``), the chosen tokens a mask, and the switch from the greedy to the fill a device flag, so the
``T`` steps queue their work without waiting for the device (one step's picks as above, whatever the device).

Our option (off by default, our previous rule): ``ridge`` ``eps`` > 0 (we used ``1e-3``) solves ``L + eps max_j L_jj I`` instead, so every token
keeps a gain and picks past the rank still trade relevance against what the chosen set spans.
"""

from __future__ import annotations

import torch

_EPS = 1e-12
RELEVANCE_SHIFT = 1e-6  # official l.160


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., N, M]`` cosine similarity of the rows of ``a`` ``[..., N, d]`` and ``b`` ``[..., M, d]``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return a @ b.transpose(-1, -2)


def instruction_relevance(image_features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """``[N]`` relevance of each image token: ``(m - min m + 1e-6) / (max m - min m)`` with
    ``m = mean over text of -cos(image, text)`` (official l.156-160; the range is floored at ``1e-12``,
    where the official code divides by zero)."""
    mean_negative = -cosine_matrix(image_features.float(), text_embeddings.float()).mean(dim=-1)
    low, high = mean_negative.min(), mean_negative.max()
    return (mean_negative - low + RELEVANCE_SHIFT) / (high - low).clamp_min(_EPS)


def conditional_kernel(image_features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``L = diag(r) S diag(r)`` ``[N, N]`` in float32, ``S`` the cosine similarity of the image features
    normalised in their own dtype (official l.151-153, 167)."""
    unit = (image_features / image_features.norm(dim=-1, keepdim=True)).float()
    return relevance[:, None] * (unit @ unit.T) * relevance[None, :]


def dpp_greedy_map(kernel: torch.Tensor, count: int, ridge: float = 0.0) -> torch.Tensor:
    """Indices ``[count]`` chosen greedily to maximise ``det(L_Y)``, in the order they were chosen.

    Float32, as the official loop (l.170-181), with its update ``c_j = (L_j - C[:, j]^T C) / d_j`` in the
    same operand order (on the CPU the same rounding, hence the same picks among noise-level gains; tested
    against the official ``einsum``). The first pick whose gain is not positive ends the greedy and the
    lowest-indexed free tokens fill the rest (module docstring). ``ridge`` > 0 (our option) adds
    ``ridge * max_j L_jj`` to the diagonal first.

    On the device throughout: step ``t`` picks ``argmax_j d_j^2`` while ``greedy`` (a 0-d bool: no pick has
    run out of gains) holds, else the lowest free index; after a pick whose gain is not positive, the row and
    the gains are left as they are (``c = 0``), as the official loop stops updating them.
    """
    size = kernel.shape[0]
    if not 0 < count <= size:
        raise ValueError(f"cannot select {count} of {size} items: valid range is [1, {size}]")
    kernel = kernel.float()
    if ridge > 0:
        kernel = kernel + ridge * kernel.diagonal().max() * torch.eye(size, dtype=kernel.dtype, device=kernel.device)
    cholesky = kernel.new_zeros(count, size)
    gains = kernel.diagonal().clone()
    chosen = torch.empty(count, dtype=torch.long, device=kernel.device)
    free = torch.ones(size, dtype=torch.bool, device=kernel.device)
    greedy = torch.ones((), dtype=torch.bool, device=kernel.device)
    for step in range(count):
        best = torch.where(greedy, gains.argmax(), free.to(torch.uint8).argmax()).view(1)  # argmax: first max
        chosen[step : step + 1] = best
        free = free.index_fill(0, best, False)
        gain = gains.index_select(0, best)
        greedy = greedy & (gain[0] > 0)
        row = (kernel.index_select(0, best)[0] - cholesky[:step].index_select(1, best)[:, 0] @ cholesky[:step]) / gain.sqrt()
        cholesky[step] = row = torch.where(greedy, row, 0.0)
        gains = (gains - row.square()).masked_fill(~free, float("-inf"))
    return chosen

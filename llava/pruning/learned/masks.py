"""Keep masks from keep logits: binary Gumbel-softmax (training) and threshold (evaluation).

Binary Gumbel-softmax (binary Concrete) with temperature ``tau``: with ``g1, g2 ~ Gumbel(0, 1)``,

    p_j = softmax([l_j + g1, g2] / tau)[0] = sigmoid((l_j + g1 - g2) / tau),   g1 - g2 ~ Logistic(0, 1)

Hard mask in evaluation: ``keep_j = sigmoid(l_j) > 0.5``, i.e. ``l_j > 0``. A token dropped at one
pruning layer stays dropped, so the keep weight of a token at stage ``i`` is ``P_i = prod_{k<=i} p_k``.
"""

from __future__ import annotations

import torch


def gumbel_keep_probs(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Soft keep probabilities ``sigmoid((l + logistic noise) / tau)``, differentiable in ``l``."""
    if temperature <= 0:
        raise ValueError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
    uniform = torch.rand(logits.shape, generator=generator).to(logits.device).clamp(1e-6, 1 - 1e-6)
    logistic = torch.log(uniform) - torch.log1p(-uniform)
    return torch.sigmoid((logits + logistic.to(logits.dtype)) / temperature)


def hard_keep_mask(logits: torch.Tensor) -> torch.Tensor:
    """``sigmoid(l) > 0.5`` as a bool mask."""
    return logits > 0

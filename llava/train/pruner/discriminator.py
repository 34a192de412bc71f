"""Discriminator telling unpruned (real) from pruned (fake) text hidden states, one input per pruning layer.

For each pruning layer ``i``, the text hidden states ``h_1..h_T`` (valid text tokens after the image,
in order, rank ``r`` in ``0..T-1``, ``s_r = r / max(T - 1, 1)``) are pooled with weights growing
along the sequence and, in training, position-aware Gaussian noise shrinking along it:

    u_r   = 0.3 + 0.7 s_r                      (pooling weight, 0.3 -> 1.0)
    sigma = 0.05 - 0.04 s_r                    (noise std, 0.05 -> 0.01; training only)
    z_i   = sum_r u_r (h_r + sigma_r eps_r) / sum_r u_r
    D     = sigmoid(MLP([MLP_1(z_1) ; ... ; MLP_L(z_L)]))

Linear layers are optionally spectrally normalised.
"""

from __future__ import annotations

import torch
from torch import nn

POOL_WEIGHT_RANGE = (0.3, 1.0)
NOISE_STD_RANGE = (0.05, 0.01)


def sequence_fraction(text_valid: torch.Tensor) -> torch.Tensor:
    """``s_r = r / max(T - 1, 1)`` for valid tokens (rank ``r`` among the valid ones), 0 elsewhere; ``[B, N]``."""
    rank = text_valid.long().cumsum(dim=1) - 1
    count = text_valid.sum(dim=1, keepdim=True)
    return torch.where(text_valid, rank.float() / (count - 1).clamp(min=1).float(), 0.0)


def pool_text_states(
    hidden: torch.Tensor, text_valid: torch.Tensor, noise_generator: torch.Generator | None, add_noise: bool
) -> torch.Tensor:
    """Weighted mean ``z`` ``[B, d]`` of the valid text hidden states ``hidden`` ``[B, N, d]`` (formula above)."""
    fraction = sequence_fraction(text_valid)
    weights = (POOL_WEIGHT_RANGE[0] + (POOL_WEIGHT_RANGE[1] - POOL_WEIGHT_RANGE[0]) * fraction) * text_valid
    if add_noise:
        std = NOISE_STD_RANGE[0] + (NOISE_STD_RANGE[1] - NOISE_STD_RANGE[0]) * fraction
        noise = torch.randn(hidden.shape, generator=noise_generator).to(hidden.device, hidden.dtype)
        hidden = hidden + std[:, :, None] * noise
    return (hidden * weights[:, :, None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)


class Discriminator(nn.Module):
    """``D(states) in (0, 1)``, ``[B]``: the probability that the text states come from the unpruned model."""

    def __init__(self, d_model: int, num_layers: int, hidden_dim: int = 64, use_spectral_norm: bool = True) -> None:
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if use_spectral_norm else (lambda module: module)
        self.layer_mlps = nn.ModuleList(
            nn.Sequential(wrap(nn.Linear(d_model, hidden_dim)), nn.LeakyReLU(0.2)) for _ in range(num_layers)
        )
        self.head = nn.Sequential(
            wrap(nn.Linear(num_layers * hidden_dim, hidden_dim)), nn.LeakyReLU(0.2), wrap(nn.Linear(hidden_dim, 1))
        )

    def forward(
        self, layer_states: list[torch.Tensor], text_valid: torch.Tensor, noise_generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``layer_states``: one ``[B, N, d]`` tensor per pruning layer; ``text_valid``: ``[B, N]`` bool."""
        if len(layer_states) != len(self.layer_mlps):
            raise ValueError(f"expected hidden states of {len(self.layer_mlps)} layers, got {len(layer_states)}")
        features = [
            mlp(pool_text_states(states, text_valid, noise_generator, add_noise=self.training))
            for mlp, states in zip(self.layer_mlps, layer_states, strict=True)
        ]
        return torch.sigmoid(self.head(torch.cat(features, dim=-1))).squeeze(-1)

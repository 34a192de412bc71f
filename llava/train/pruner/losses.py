"""Training losses of the learned pruner (pure functions).

* task:          CE of the answer tokens, ``-mean_t log p(y_t | y_<t)`` over labels != -100 (shifted by one);
* adversarial:   generator ``-mean log D(fake)``; discriminator ``-(mean log D(real) + mean log(1 - D(fake))) / 2``;
* sparsity:      ``mean_i (log mean_j P_i(j) - log rho_i)^2`` with ``P_i`` the cumulative keep of stage ``i``
                 and ``rho_i`` its target keep ratio (a target token count ``K_i`` is ``rho_i = K_i / S``);
                 in log ratio, so keeping k times too few costs as much as k times too many (a relative
                 difference ``(P - rho) / rho`` costs at most 1 for dropping everything but ``(1 / rho)^2`` for
                 keeping everything: measured on the shapes VLM at 64 tokens, it drove the first stage to
                 2 % kept in 15 steps and left it at 8 % against a 20 % target after 150);
* token count:   ``mean_{b,i} (log sum_j P_i(b, j) - log K_i)^2``: every sample keeps ``K_i`` tokens after
                 stage ``i`` (what the planned hard rule keeps), not only the batch on average;
* binarization:  ``mean_i mean_j 2 min(q_i(j), 1 - q_i(j))`` (0 for 0/1, 1 at 0.5; unlike ``4q(1-q)`` its
                 gradient does not vanish at 0.5, where untrained logits sit), applied to the noise-free
                 ``q = sigmoid(l)``: Gumbel samples are near 0/1 at low temperature whatever ``l`` is, while
                 ``E[p] ~ q`` and evaluation keeps ``q > 0.5``, so binary ``q`` makes soft and hard keep agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE on the labelled (answer) positions; ``logits`` ``[B, N, V]``, ``labels`` ``[B, N]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-mean log D(fake)``."""
    return F.binary_cross_entropy(fake_scores, torch.ones_like(fake_scores))


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``-(mean log D(real) + mean log(1 - D(fake))) / 2``."""
    real = F.binary_cross_entropy(real_scores, torch.ones_like(real_scores))
    fake = F.binary_cross_entropy(fake_scores, torch.zeros_like(fake_scores))
    return (real + fake) / 2


def sparsity_loss(cumulative_keep: list[torch.Tensor], target_ratios: list[float]) -> torch.Tensor:
    """``mean_i (log mean_j P_i(j) - log rho_i)^2``."""
    if len(cumulative_keep) != len(target_ratios):
        raise ValueError(f"{len(cumulative_keep)} stages but {len(target_ratios)} target keep ratios")
    gaps = [(torch.log(keep.mean().clamp_min(1e-8)) - math.log(target)) ** 2
            for keep, target in zip(cumulative_keep, target_ratios, strict=True)]
    return torch.stack(gaps).mean()


def token_count_loss(cumulative_keep: list[torch.Tensor], target_tokens: list[float]) -> torch.Tensor:
    """``mean_{b,i} (log sum_j P_i(b, j) - log K_i)^2``; ``cumulative_keep[i]`` is ``[B, S]``."""
    if len(cumulative_keep) != len(target_tokens):
        raise ValueError(f"{len(cumulative_keep)} stages but {len(target_tokens)} target token counts")
    gaps = [(torch.log(keep.sum(dim=1).clamp_min(1e-8)) - math.log(count)) ** 2
            for keep, count in zip(cumulative_keep, target_tokens, strict=True)]
    return torch.stack(gaps).mean()


def discriminator_accuracy(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> float:
    """Share of right calls, ``(mean[D(real) > 0.5] + mean[D(fake) < 0.5]) / 2``."""
    return float(((real_scores > 0.5).float().mean() + (fake_scores < 0.5).float().mean()) / 2)


def binarization_loss(keep_probs: list[torch.Tensor]) -> torch.Tensor:
    """``mean_i mean_j 2 min(q, 1 - q)``."""
    return torch.stack([(2 * torch.minimum(probs, 1 - probs)).mean() for probs in keep_probs]).mean()

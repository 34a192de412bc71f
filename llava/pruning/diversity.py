"""VisPruner's token choice: important tokens by [CLS] attention, the rest by removing duplicates.

Zhang et al., 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner). Of ``T`` kept tokens, ``round(T * r)`` are the ones the vision tower's [CLS] token
attends to most (feature layer, mean over heads); the remaining ``T - round(T * r)`` come from the other
tokens by repeated duplicate removal: split the remaining list (raster order) into alternating halves
``A = list[0::2]``, ``B = list[1::2]``, score each token of ``A`` by its highest cosine similarity to
``B``, and drop up to 8 tokens of ``A`` with the highest scores; repeat until the count fits. The kept
tokens are returned in raster order.
"""

from __future__ import annotations

import numpy as np
import torch

DUPLICATES_PER_ROUND = 8


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, target: int) -> torch.Tensor:
    """Drop the most duplicated of ``candidates`` (ascending indices into ``features`` ``[S, d]``) until ``target`` remain.

    The similarity matrix is computed once; the rounds (inherently sequential, up to ``S / 8`` of them)
    run in NumPy on the CPU, where a round costs microseconds instead of several kernel launches.
    """
    if not 0 <= target <= len(candidates):
        raise ValueError(f"cannot keep {target} of {len(candidates)} candidates: valid range is [0, {len(candidates)}]")
    unit = features[candidates].float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = (unit @ unit.T).cpu().numpy()
    remaining = np.arange(len(candidates))  # positions in ``candidates``
    while len(remaining) > target:
        first, second = remaining[0::2], remaining[1::2]
        if len(second) == 0:
            remaining = remaining[:target]
            break
        drop = min(DUPLICATES_PER_ROUND, len(remaining) - target, len(first))
        duplication = similarity[np.ix_(first, second)].max(axis=1)
        dropped = first[np.argsort(-duplication, kind="stable")[:drop]]
        remaining = remaining[~np.isin(remaining, dropped)]
    return candidates[torch.from_numpy(remaining).to(candidates.device)]


def vispruner_keep(
    cls_attention: torch.Tensor, features: torch.Tensor, keep: int, important_ratio: float = 0.5
) -> torch.Tensor:
    """Ascending indices of the ``keep`` tokens VisPruner keeps for one image.

    ``cls_attention``: ``[S]`` [CLS] -> patch attention; ``features``: ``[S, d]`` patch features.
    """
    span = cls_attention.shape[0]
    if not 0 < keep <= span:
        raise ValueError(f"cannot keep {keep} tokens out of {span}: valid range is [1, {span}]")
    important_count = round(keep * important_ratio)
    important = cls_attention.topk(important_count).indices if important_count else cls_attention.new_empty(0).long()
    rest = torch.ones(span, dtype=torch.bool, device=cls_attention.device)
    rest[important] = False
    diverse = remove_duplicates(features, rest.nonzero()[:, 0], keep - important_count)
    return torch.cat([important, diverse]).sort().values

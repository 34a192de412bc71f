"""VisPruner's token choice: important tokens by [CLS] attention, the rest by removing duplicates.

Zhang et al., 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner). Official code: Theia-4869/VisPruner at aefa01ad, ``llava/model/llava_arch.py``
(``encode_images``), step by step:

* the [CLS] -> patch attention of the feature layer, mean over heads, ranks the ``S`` tokens in
  descending order (l.154-155); ``int(T * r)`` (floor) of them are the important tokens (l.150, 156);
* the other ``S - int(T * r)`` stay a list in that descending order (l.157); each round drops
  ``min(8, len - target)`` of them (l.162-165): split the list into alternating halves ``A = list[0::2]``,
  ``B = list[1::2]`` (l.168), score each token of ``A`` by its highest cosine similarity to ``B``
  (l.160, 169-170), sort ``A`` by that score, descending, and drop its first ones; the new list is the rest
  of ``A`` *in that sorted order* followed by ``B`` (l.172-176). The rounds stop when ``T - int(T * r)``
  remain (l.163-165);
* the kept tokens are a mask over the raster grid (l.178-183), so their order in the LLM is raster order.

Edges, where the official code is undefined: a list of odd length makes its indexing fail (``IndexError``,
e.g. ``T = 66`` of 576 tokens, when ``int(T * r)`` is odd); we split it the same way (``A`` one longer) and go
on. When ``A`` is shorter than the drop count it drops all of ``A`` (its indexing broadcasts to nothing);
so do we. Ties in a descending sort (unordered in the official ``argsort``) keep the list order here.

Our options (off by default): ``count_rounding="round"`` (``round(T * r)`` important tokens) and
``diverse_order="raster"`` (the list starts in raster order and each round removes the dropped tokens
in place, never re-ordered).
"""

from __future__ import annotations

import torch

from llava.pruning.budget import COUNT_ROUNDINGS

DUPLICATES_PER_ROUND = 8
ATTENTION_ORDER, RASTER_ORDER = "attention", "raster"
DIVERSE_ORDERS = (ATTENTION_ORDER, RASTER_ORDER)


def check_choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    """``ValueError`` naming the valid values unless ``value`` is one of them."""
    if value not in valid:
        raise ValueError(f"vispruner: unknown {option} {value!r}; valid: {', '.join(valid)}")


def important_count(keep: int, important_ratio: float, count_rounding: str = "floor") -> int:
    """Important tokens among ``keep``: ``int(keep * r)`` (official, l.150) or ``round(keep * r)``."""
    check_choice("count_rounding", count_rounding, COUNT_ROUNDINGS)
    return int(keep * important_ratio) if count_rounding == "floor" else round(keep * important_ratio)


def remove_duplicates(
    features: torch.Tensor, candidates: torch.Tensor, target: int, reorder: bool = True
) -> torch.Tensor:
    """The ``target`` of ``candidates`` (ordered indices into ``features`` ``[S, d]``) left by duplicate removal.

    Each round splits the list into ``A = list[0::2]`` and ``B = list[1::2]`` and drops the
    ``min(8, len - target)`` tokens of ``A`` most similar (cosine) to some token of ``B``. ``reorder``
    (official): the list becomes the rest of ``A`` by descending similarity, then ``B``; otherwise the
    dropped tokens leave the list in place. The cosine matrix is computed once in ``features``' dtype (the
    official code normalises and multiplies in the tower's dtype; a single flipped near-tie re-orders every
    later round, so the precision matters), then compared in float64. The rounds (inherently sequential, up
    to ``S / 8`` of them) run on the features' device without reading a value back: every round's sizes
    follow from ``len(candidates)`` and ``target``, the order is a stable ``argsort`` and a removal a stable
    sort of the kept flags. Returns the survivors in list order.
    """
    if not 0 <= target <= len(candidates):
        raise ValueError(f"cannot keep {target} of {len(candidates)} candidates: valid range is [0, {len(candidates)}]")
    if target == 0:
        return candidates[:0]
    unit = features[candidates]
    unit = unit / unit.norm(dim=-1, keepdim=True)
    similarity = (unit @ unit.T).double()  # exact: float64 holds every narrower value
    remaining = torch.arange(len(candidates), device=similarity.device)  # positions in ``candidates``
    while len(remaining) > target:
        first, second = remaining[0::2], remaining[1::2]
        drop = min(DUPLICATES_PER_ROUND, len(remaining) - target)
        duplication = similarity[first][:, second].max(dim=1).values
        ranked = first[torch.argsort(-duplication, stable=True)]
        if reorder:
            remaining = torch.cat([ranked[drop:], second])
        else:
            dropped = ranked[:drop]  # all of ``A`` when it is shorter than ``drop``
            flags = (remaining[:, None] == dropped[None, :]).any(dim=1)
            remaining = remaining[flags.to(torch.uint8).argsort(stable=True)[: len(remaining) - len(dropped)]]
    return candidates[remaining.to(candidates.device)]


def vispruner_keep(
    cls_attention: torch.Tensor,
    features: torch.Tensor,
    keep: int,
    important_ratio: float = 0.5,
    count_rounding: str = "floor",
    diverse_order: str = ATTENTION_ORDER,
) -> torch.Tensor:
    """Ascending indices of the ``keep`` tokens VisPruner keeps for one image.

    ``cls_attention``: ``[S]`` [CLS] -> patch attention; ``features``: ``[S, d]`` patch features.
    """
    check_choice("diverse_order", diverse_order, DIVERSE_ORDERS)
    span = cls_attention.shape[0]
    if not 0 < keep <= span:
        raise ValueError(f"cannot keep {keep} tokens out of {span}: valid range is [1, {span}]")
    important = important_count(keep, important_ratio, count_rounding)
    ranked = cls_attention.argsort(descending=True, stable=True)
    rest = ranked[important:] if diverse_order == ATTENTION_ORDER else ranked[important:].sort().values
    diverse = remove_duplicates(features, rest, keep - important, reorder=diverse_order == ATTENTION_ORDER)
    return torch.cat([ranked[:important], diverse]).sort().values

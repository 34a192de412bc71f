"""Token selection from attention rows restricted to the prunable span.

All functions are pure. The strategy functions take the attention probabilities of one query row (the
last prompt token in FastV) over the span, per head, ``attn`` of shape ``[B, H, S]``, and score the span
tokens; ``top_r_sorted`` / ``top_valid_sorted`` turn scores ``[B, S]`` into sorted indices into the span
(the selection of every score method, ``llava.pruning.methods.scorer``).

FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2") ranks image tokens by the
attention they receive at layer K-1. The three strategies of FastV-Advanced:

* ``avg_all_heads``:        s_j = mean_h A[h, j]                                   (original FastV)
* ``max_head``:             h* = argmax_h sum_j A[h, j];  s_j = A[h*, j]
* ``weighted_combination``: s_j = alpha * A[h*, j] + (1 - alpha) * mean_{h != h*} A[h, j]

Metadata is recorded as the methods compute it, tensors left on their device (``device_metadata``), so a
selection never waits for the device inside the timed prefill; ``metadata`` reads it as Python values,
each tensor as its ``tolist()`` (``host_values``), when a reader asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

TOKEN_SELECTION_STRATEGIES = ("avg_all_heads", "max_head", "weighted_combination")


def map_tensors(value: Any, convert: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with every tensor in it replaced by ``convert(tensor)``: dicts, lists and tuples are walked (a
    per-sample ragged value may be a list of tensors), anything else is returned as it is."""
    if isinstance(value, torch.Tensor):
        return convert(value)
    if isinstance(value, Mapping):
        return {key: map_tensors(item, convert) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(map_tensors(item, convert) for item in value)
    return value


def host_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as Python values (JSON-friendly): each tensor as its ``tolist()``, read from its device here."""
    return map_tensors(dict(metadata), torch.Tensor.tolist)


def detached_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` with each tensor detached from autograd (what a record keeps), left on its device."""
    return map_tensors(dict(metadata), torch.Tensor.detach)


class MetadataView:
    """``metadata``: the ``device_metadata`` (tensors on their device) read as Python values, converted on every
    read (``host_values``): a new plain dict, so a reader can neither change the stored values nor make the
    measured path wait for the device."""

    device_metadata: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return host_values(self.device_metadata)


@dataclass
class TokenSelection(MetadataView):
    """Kept span indices ``[B, R]`` (ascending), the per-token scores ``[B, S]`` and strategy metadata.

    ``device_metadata``: what the method reports beside the scores, tensors left on their device (e.g.
    FastV's ``max_head_idx`` ``[B]``); ``metadata`` reads it as Python values (``host_values``).

    ``replacement``: optional ``(columns [B, C], hidden [B, C, d])``: the kept tokens at those columns of
    ``indices`` enter the next layer with these hidden states instead of their own (merged tokens, e.g.
    SparseVLM's recycled clusters).
    ``valid``: optional ``[B, R]`` bool for samples that keep fewer than ``R`` tokens: the columns marked
    False are padding, invisible to every later layer (the batch stays rectangular, each sample keeps
    exactly its own set).
    ``sources``: optional ``[B, R]`` span columns (of the live span before this stage) whose token each kept
    slot holds, when a method lays its tokens out in another order than ``indices`` (SparseVLM's cluster
    tokens after the kept ones, with renumbered positions a slot being only a place in the order); the
    record labels each slot with that token (a merged token with its source, e.g. its cluster centre).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    device_metadata: dict = field(default_factory=dict)
    replacement: tuple[torch.Tensor, torch.Tensor] | None = None
    valid: torch.Tensor | None = None
    sources: torch.Tensor | None = None


@dataclass
class SoftSelection:
    """The engine's soft mode (training): keep probabilities ``[B, S]`` of the live span tokens at one stage.

    Nothing is removed; from this layer on every query sees key ``k`` with the additive bias ``log P(k)``,
    ``P`` the product of the stages' keep probabilities, so a token at ``P = 0`` is invisible as if removed
    and gradients reach whatever produced ``keep_probs``. ``logits``: the keep logits behind them.
    """

    keep_probs: torch.Tensor
    logits: torch.Tensor
    metadata: dict = field(default_factory=dict)


def top_r_sorted(scores: torch.Tensor, r: int) -> torch.Tensor:
    """Indices of the ``r`` largest scores along the last dim, returned in ascending (original) order."""
    if not 0 < r <= scores.shape[-1]:
        raise ValueError(
            f"cannot keep {r} tokens out of a span of {scores.shape[-1]}: valid range is [1, {scores.shape[-1]}]"
        )
    return scores.topk(r, dim=-1).indices.sort(dim=-1).values


def top_valid_sorted(scores: torch.Tensor, valid: torch.Tensor, r: int) -> torch.Tensor:
    """``top_r_sorted`` where slots with ``valid`` False (``[B, S]`` bool) score ``-inf``: they are chosen only
    after every valid slot (a valid slot scoring ``-inf`` ties with them). Ties among valid slots break as in
    ``top_r_sorted``, so with every slot valid the result is ``top_r_sorted(scores, r)``."""
    return top_r_sorted(scores.masked_fill(~valid, float("-inf")), r)


def head_importance(attn: torch.Tensor) -> torch.Tensor:
    """Total span attention of each head, ``[B, H]``: ``sum_j A[h, j]``."""
    return attn.sum(dim=-1)


def validate_token_selection(strategy: str, alpha: float) -> None:
    """Raise a ``ValueError`` naming the valid options for an unknown strategy or an alpha outside [0, 1]."""
    if strategy not in TOKEN_SELECTION_STRATEGIES:
        raise ValueError(
            f"unknown token selection strategy {strategy!r}; valid: {', '.join(TOKEN_SELECTION_STRATEGIES)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"weighted_alpha must lie in [0, 1], got {alpha}")


def score_span_tokens(attn: torch.Tensor, strategy: str = "avg_all_heads", alpha: float = 0.5) -> torch.Tensor:
    """``[B, S]`` score of every span token by one of FastV's strategies (higher = keep).

    ``attn``: ``[B, H, S]`` attention probabilities of the query row over the span tokens.
    """
    validate_token_selection(strategy, alpha)
    if strategy == "avg_all_heads":
        return attn.mean(dim=1)
    batch = torch.arange(attn.shape[0], device=attn.device)
    max_head_row = attn[batch, head_importance(attn).argmax(dim=-1)]  # [B, S]
    if strategy == "max_head" or attn.shape[1] == 1:
        return max_head_row
    others_mean = (attn.sum(dim=1) - max_head_row) / (attn.shape[1] - 1)
    return alpha * max_head_row + (1.0 - alpha) * others_mean


def strategy_metadata(attn: torch.Tensor, strategy: str = "avg_all_heads", alpha: float = 0.5) -> dict:
    """What FastV-Advanced reports beside the scores: the strategy (``method``), ``max_head_idx`` ``[B]`` and
    ``head_importance`` ``[B, H]`` per sample (tensors, read as lists through ``metadata``), and
    ``weighted_alpha`` where it was used."""
    importance = head_importance(attn)
    metadata = {"method": strategy, "max_head_idx": importance.argmax(dim=-1), "head_importance": importance}
    if strategy == "weighted_combination" and attn.shape[1] > 1:
        metadata["weighted_alpha"] = alpha
    return metadata


def select_span_tokens(
    attn: torch.Tensor, r: int, strategy: str = "avg_all_heads", alpha: float = 0.5
) -> TokenSelection:
    """Keep the ``r`` best span tokens by ``strategy``; indices ascending, shape ``[B, r]``."""
    scores = score_span_tokens(attn, strategy, alpha)
    return TokenSelection(top_r_sorted(scores, r), scores, strategy_metadata(attn, strategy, alpha))


def seeded_random_scores(span: int, seed: int) -> torch.Tensor:
    """``[1, span]`` uniform scores from a generator seeded with ``seed``: every sample that draws them gets
    the same keep set whatever its position in the batch (batch size N == batch size 1)."""
    return torch.rand(1, span, generator=torch.Generator().manual_seed(seed))

"""Token selection from attention rows restricted to the prunable span.

All functions are pure: they take the attention probabilities of one query row (the last prompt
token in FastV) over the span, per head, ``attn`` of shape ``[B, H, S]``, and return sorted indices
into the span.

FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2") ranks image tokens by the
attention they receive at layer K-1. The three strategies of FastV-Advanced:

* ``avg_all_heads``:        s_j = mean_h A[h, j]                                   (original FastV)
* ``max_head``:             h* = argmax_h sum_j A[h, j];  s_j = A[h*, j]
* ``weighted_combination``: s_j = alpha * A[h*, j] + (1 - alpha) * mean_{h != h*} A[h, j]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TOKEN_SELECTION_STRATEGIES = ("avg_all_heads", "max_head", "weighted_combination")


@dataclass
class TokenSelection:
    """Kept span indices ``[B, R]`` (ascending), the per-token scores ``[B, S]`` and strategy metadata.

    ``replacement``: optional ``(columns [B, C], hidden [B, C, d])``: the kept tokens at those columns of
    ``indices`` enter the next layer with these hidden states instead of their own (merged tokens, e.g.
    SparseVLM's recycled clusters).
    ``valid``: optional ``[B, R]`` bool for samples that keep fewer than ``R`` tokens: the columns marked
    False are padding, invisible to every later layer (the batch stays rectangular, each sample keeps
    exactly its own set).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    metadata: dict = field(default_factory=dict)
    replacement: tuple[torch.Tensor, torch.Tensor] | None = None
    valid: torch.Tensor | None = None


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


def score_span_tokens(attn: torch.Tensor, strategy: str = "avg_all_heads", alpha: float = 0.5) -> TokenSelection:
    """Score every span token with one of FastV's strategies (no selection yet; ``indices`` is empty).

    ``attn``: ``[B, H, S]`` attention probabilities of the query row over the span tokens.
    """
    validate_token_selection(strategy, alpha)
    importance = head_importance(attn)
    max_head = importance.argmax(dim=-1)  # [B]
    metadata = {"method": strategy, "max_head_idx": max_head.tolist(), "head_importance": importance.tolist()}
    if strategy == "avg_all_heads":
        scores = attn.mean(dim=1)
    else:
        batch = torch.arange(attn.shape[0], device=attn.device)
        max_head_row = attn[batch, max_head]  # [B, S]
        if strategy == "max_head" or attn.shape[1] == 1:
            scores = max_head_row
        else:
            others_mean = (attn.sum(dim=1) - max_head_row) / (attn.shape[1] - 1)
            scores = alpha * max_head_row + (1.0 - alpha) * others_mean
            metadata["weighted_alpha"] = alpha
    return TokenSelection(indices=scores.new_empty(0, dtype=torch.long), scores=scores, metadata=metadata)


def select_span_tokens(
    attn: torch.Tensor, r: int, strategy: str = "avg_all_heads", alpha: float = 0.5
) -> TokenSelection:
    """Keep the ``r`` best span tokens by ``strategy``; indices ascending, shape ``[B, r]``."""
    selection = score_span_tokens(attn, strategy, alpha)
    selection.indices = top_r_sorted(selection.scores, r)
    return selection


def select_tokens_random(batch: int, span: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random keep set of ``r`` of ``span`` tokens per sample, ascending, ``[batch, r]``."""
    scores = torch.rand(batch, span, generator=generator)
    return top_r_sorted(scores, r)

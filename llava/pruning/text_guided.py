"""Text-guided scoring of span tokens (SparseVLM): text "raters" and the attention they pay to the span.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference".

Raters: for the text tokens after the span, relevance ``r_t = mean_v softmax_t(e_v . e_t)`` with ``e`` the
decoder's input embeddings (layer 0), softmax over the text tokens for each visual token ``v``, mean over
visual tokens; raters are the text tokens with ``r_t > mean_t r_t`` (choice: when none is above the mean,
e.g. a single text token or equal relevance, every text token rates). Visual token ``j`` is then scored by
the attention the raters pay it, averaged over heads and over raters.

SparseVLM v2 keeps only the heads that give the span the most rater attention and divides the attention
by a RoPE-only positional bias: the attention a constant query/key vector (all ones) would produce after
the rotary embedding, ``softmax_j(RoPE_i(1) . RoPE_j(1) / sqrt(d))`` over the span keys (choice: the
constant vector and the normalisation over the span are ours; the design names only "RoPE-only bias").
The corrected rows are renormalised to sum 1 over the span.
"""

from __future__ import annotations

import torch


def text_raters(visual_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """``[T]`` bool: the text tokens whose mean softmax relevance to the visual tokens is above the mean.

    ``visual_embeddings``: ``[S, d]``; ``text_embeddings``: ``[T, d]`` (layer-0 inputs).
    """
    relevance = (visual_embeddings.float() @ text_embeddings.float().T).softmax(dim=-1).mean(dim=0)
    raters = relevance > relevance.mean()
    return raters if raters.any() else torch.ones_like(raters)


def rater_span_scores(span_attention: torch.Tensor, rater_weights: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` score of each span token: mean over heads, weighted over rater rows.

    ``span_attention``: ``[B, H, Q, S]`` attention of ``Q`` query rows over the span;
    ``rater_weights``: ``[B, Q]`` non-negative, summing to 1 over each sample's raters (0 for padding rows).
    """
    return (span_attention.mean(dim=1) * rater_weights[:, :, None]).sum(dim=1)


def rope_positional_bias(
    query_rope: tuple[torch.Tensor, torch.Tensor], key_rope: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``[B, Q, S]`` RoPE-only attention of constant (all-ones) queries over constant keys, softmax over ``S``.

    ``query_rope`` / ``key_rope``: ``(cos, sin)`` of shapes ``[B, Q, d]`` / ``[B, S, d]`` (Llama's
    ``rotate_half`` layout: the first half of the dims pairs with the second).
    """

    def rotated_ones(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = cos.shape[-1] // 2
        sign = torch.cat([-torch.ones(half), torch.ones(cos.shape[-1] - half)]).to(cos.device, torch.float32)
        return cos.float() + sign * sin.float()

    queries, keys = rotated_ones(*query_rope), rotated_ones(*key_rope)
    return (queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5).softmax(dim=-1)


def top_rater_heads(span_attention: torch.Tensor, rater_weights: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, heads]`` the heads whose rater rows put the most attention on the span (SparseVLM v2)."""
    mass = (span_attention.sum(dim=-1) * rater_weights[:, None, :]).sum(dim=-1)  # [B, H]
    return mass.sort(dim=-1, descending=True, stable=True).indices[:, : min(heads, mass.shape[1])]


def debiased_span_attention(span_attention: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[B, H, Q, S]`` attention divided by the positional bias ``[B, Q, S]``, renormalised over ``S``."""
    corrected = span_attention / bias[:, None].clamp_min(1e-12)
    return corrected / corrected.sum(dim=-1, keepdim=True).clamp_min(1e-12)

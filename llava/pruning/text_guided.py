"""Text-guided scoring of span tokens (SparseVLM): text "raters" and the attention they pay to the span.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference".

Raters: for the text tokens after the span, relevance ``r_t = mean_v softmax_t(e_v . e_t)`` with ``e`` the
decoder's input embeddings (layer 0), softmax over the text tokens for each visual token ``v``, mean over
visual tokens; raters are the text tokens with ``r_t > mean_t r_t`` (choice: when none is above the mean,
e.g. a single text token or equal relevance, every text token rates). Visual token ``j`` is then scored by
the attention the raters pay it, averaged over heads and over raters.
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

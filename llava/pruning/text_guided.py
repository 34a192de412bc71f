"""Text-guided scoring of span tokens (SparseVLM): text "raters" and the attention they pay to the span.

Zhang et al., 2024, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
as the official code does it (Gumpest/SparseVLMs; v1.5: branch ``v1.5`` at 734d9003879689713a132b83297dfad060a5c9af;
SparseVLM+: branch ``v2.0`` at 9e1f649ef6a78878e2b10d1d6f49ecd7f4d84094; both in
``llava/model/language_model/``, MSL = ``modelling_sparse_llama.py``):

* raters (v1.5 MSL l.199-204, the same in v2.0): with ``e`` the decoder's input embeddings (before layer 0)
  and the text tokens = every token after the span, relevance ``r_t = mean_v softmax_t(e_v . e_t)``
  (softmax over the text tokens for each visual token ``v``, then the mean over visual tokens), in the
  embeddings' dtype; the raters are the text tokens with ``r_t > mean_t r_t``. Choice where the official
  code is undefined: when no token is above the mean (a single text token, or equal relevance) its rater
  set is empty and its scores NaN; here every text token rates then.
* scores (v1.5 ``score.py`` l.21-26): the attention probabilities of the scoring layer, mean over heads,
  rows of the raters, columns of the span, mean over raters.
* SparseVLM+ (v2.0 MSL l.242-257, ``score.py`` l.48-55): the probabilities are divided by the raw RoPE-only
  logit ``RoPE_i(1) . RoPE_j(1) / sqrt(head_dim)`` of an all-ones query and key (no softmax, no
  renormalisation; the logit can be small or negative, the official code divides anyway), then only the
  14 heads with the most (corrected) rater -> span attention are averaged.
"""

from __future__ import annotations

import torch


def text_raters(visual_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """``[T]`` bool: the text tokens whose mean softmax relevance to the visual tokens is above the mean.

    ``visual_embeddings``: ``[S, d]``; ``text_embeddings``: ``[T, d]`` (layer-0 inputs, v1.5 MSL l.200-204).
    """
    relevance = (visual_embeddings @ text_embeddings.T).softmax(dim=-1).mean(dim=0)
    raters = relevance > relevance.mean()
    return raters if raters.any() else torch.ones_like(raters)


def rater_span_scores(span_attention: torch.Tensor, rater_weights: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` score of each span token: mean over heads, weighted over rater rows (``score.py`` l.21-26).

    ``span_attention``: ``[B, H, Q, S]`` attention of ``Q`` query rows over the span;
    ``rater_weights``: ``[B, Q]`` non-negative, summing to 1 over each sample's raters (0 for padding rows).
    """
    return (span_attention.mean(dim=1) * rater_weights[:, :, None]).sum(dim=1)


def rope_logit_bias(
    query_rope: tuple[torch.Tensor, torch.Tensor], key_rope: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``[B, Q, S]`` RoPE-only attention logit of an all-ones query over all-ones keys (v2.0 MSL l.244-250).

    ``query_rope`` / ``key_rope``: ``(cos, sin)`` of shapes ``[B, Q, d]`` / ``[B, S, d]`` (Llama's
    ``rotate_half`` layout: the first half of the dims pairs with the second).
    """

    def rotated_ones(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = cos.shape[-1] // 2
        sign = torch.cat([-torch.ones(half), torch.ones(cos.shape[-1] - half)]).to(cos.device, torch.float32)
        return cos.float() + sign * sin.float()

    queries, keys = rotated_ones(*query_rope), rotated_ones(*key_rope)
    return queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5


def top_rater_heads(span_attention: torch.Tensor, rater_weights: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, min(heads, H)]`` the heads whose rater rows put the most attention on the span (``score.py``
    l.48-55: sum over raters and span tokens, ``topk``; ties to the lower head index)."""
    mass = (span_attention.sum(dim=-1) * rater_weights[:, None, :]).sum(dim=-1)  # [B, H]
    return mass.sort(dim=-1, descending=True, stable=True).indices[:, : min(heads, mass.shape[1])]

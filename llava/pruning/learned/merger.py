"""TokenMerger: summarise vision tokens into ``M`` tokens with learnable, question-modulated queries.

    g      = mean of the valid question tokens                           ([B, d])
    Q_m    = E_m * (1 + gamma(g)) + beta(g)        (E: [M, d] learnable queries, FiLM by the question)
    out_m  = CrossAttention(query = Q_m, keys = values = LN(vision tokens, weighted by keep))

Dropped tokens (keep weight 0) are excluded through ``log(keep)`` on the attention logits.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenMerger(nn.Module):
    """``[B, S, d]`` vision tokens -> ``[B, M, d]`` merged tokens."""

    def __init__(self, d_model: int, num_outputs: int, num_heads: int = 4) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs (M) must be >= 1, got {num_outputs}")
        self.queries = nn.Parameter(torch.randn(num_outputs, d_model) * d_model**-0.5)
        self.film = nn.Linear(d_model, 2 * d_model)
        self.vision_norm = nn.LayerNorm(d_model)
        self.cross_attention = nn.MultiheadAttention(d_model, num_heads, batch_first=True)

    def forward(
        self,
        vision: torch.Tensor,
        question: torch.Tensor,
        question_valid: torch.Tensor,
        keep_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merged tokens ``[B, M, d]``; ``keep_weights`` ``[B, S]`` in [0, 1] (None: all tokens)."""
        valid = question_valid.to(question.dtype)[:, :, None]
        summary = (question * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        gamma, beta = self.film(summary).chunk(2, dim=-1)
        queries = self.queries[None] * (1.0 + gamma[:, None]) + beta[:, None]
        normed = self.vision_norm(vision)
        bias = None
        if keep_weights is not None:
            heads = self.cross_attention.num_heads
            log_keep = keep_weights.clamp(min=1e-6).log()[:, None, None, :]  # [B, 1, 1, S]
            bias = log_keep.expand(-1, heads, queries.shape[1], -1).reshape(-1, queries.shape[1], vision.shape[1])
        merged, _ = self.cross_attention(queries, normed, normed, attn_mask=bias, need_weights=False)
        return merged

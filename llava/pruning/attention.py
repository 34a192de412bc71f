"""Attention probabilities for a few query rows, computed from q and k (after RoPE) without the N x N map.

Cost is O(Q x N x D) per head for Q query rows, so SDPA / flash attention stay on for the model
itself and no ``output_attentions`` is needed.
"""

from __future__ import annotations

import torch


def attention_probs_for_rows(
    query_rows: torch.Tensor,
    keys: torch.Tensor,
    query_index: torch.Tensor,
    key_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """softmax(q k^T * scaling) over causal, non-padded keys, in float32.

    Args:
        query_rows: ``[B, H, Q, D]`` queries of the selected rows (RoPE applied).
        keys: ``[B, H_kv, N, D]`` keys of the whole sequence (RoPE applied); GQA groups are shared.
        query_index: ``[B, Q]`` sequence index of each query row (for the causal mask).
        key_valid: ``[B, N]`` bool, False for padding; None means all valid.
        scaling: usually ``head_dim ** -0.5``.

    Returns:
        ``[B, H, Q, N]`` attention probabilities.
    """
    batch, heads, _, _ = query_rows.shape
    n_keys = keys.shape[2]
    groups = heads // keys.shape[1]
    keys = keys.float().repeat_interleave(groups, dim=1)  # [B, H, N, D]
    logits = torch.matmul(query_rows.float(), keys.transpose(-1, -2)) * scaling  # [B, H, Q, N]
    allowed = torch.arange(n_keys, device=keys.device)[None, None, :] <= query_index[:, :, None]  # [B, Q, N]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :].bool()
    logits = logits.masked_fill(~allowed[:, None], torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1)


def full_attention_probs(
    queries: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """The full ``[B, H, N, N]`` causal attention map, as ``output_attentions`` returns it.

    Reference path only (tests and the "as the reference implementations do it" benchmark row):
    it materialises N x N per head.
    """
    n = queries.shape[2]
    all_rows = torch.arange(n, device=queries.device).expand(queries.shape[0], n)
    return attention_probs_for_rows(queries, keys, all_rows, key_valid, scaling)

"""Pure tensor functions behind windowed / compressed attention (no model code here).

Shapes: ``B`` batch, ``H`` heads, ``q`` query rows, ``L`` retained keys, ``D`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvcompress.layout import KVPolicy, WindowKV


def allowed_keys(query_positions: torch.Tensor, key_positions: torch.Tensor, policy: KVPolicy) -> torch.Tensor:
    """Boolean mask ``[..., q, L]``: may the query at absolute position ``i`` read the key at ``j``?

    Causal everywhere: ``j <= i``. For :class:`WindowKV` also ``j < sinks`` or ``i - j < window``.
    ``query_positions`` is ``[q]``; ``key_positions`` is ``[..., L]`` (e.g. ``[1, 1, L]`` or ``[B, H, L]``).
    """
    i = query_positions[:, None]
    j = key_positions[..., None, :]
    allowed = j <= i
    if isinstance(policy, WindowKV):
        allowed = allowed & ((j < policy.sinks) | (i - j < policy.window))
    return allowed


def snapkv_keep_indices(
    observation_queries: torch.Tensor,
    keys: torch.Tensor,
    query_to_kv: torch.Tensor,
    num_kv_heads: int,
    scaling: float,
    budget: int,
    pool_kernel: int,
) -> torch.Tensor:
    """SnapKV selection: indices ``[B, H_kv, budget]`` (sorted) of keys to keep per KV head.

    With the last ``w`` queries (the observation window) ``Q_obs`` ``[B, H_q, w, D]`` and the keys
    expanded per query head ``K`` ``[B, H_q, L, D]`` (the queries are the *last* ``w`` positions):

    * ``A = softmax(Q_obs K^T · scaling)`` with the causal mask inside the window,
    * votes ``v_j = Σ_a A_{a j}`` for prefix keys ``j < L - w``, averaged over the query heads of a KV head,
    * ``v`` is max-pooled over positions (kernel ``pool_kernel``), the ``budget - w`` best prefix keys
      are kept together with the whole observation window.
    """
    batch, _, window, _ = observation_queries.shape
    length = keys.shape[2]
    prefix = length - window
    if budget >= length:
        return torch.arange(length, device=keys.device).expand(batch, num_kv_heads, length)
    scores = torch.matmul(observation_queries.float(), keys.float().transpose(-1, -2)) * scaling
    positions = torch.arange(length, device=keys.device)
    causal = positions[None, :] <= (prefix + torch.arange(window, device=keys.device))[:, None]
    scores = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    votes = scores[..., :prefix].sum(-2)  # [B, H_q, prefix]
    per_kv = torch.zeros(batch, num_kv_heads, prefix, device=keys.device)
    per_kv.index_add_(1, query_to_kv, votes)
    counts = torch.bincount(query_to_kv, minlength=num_kv_heads).clamp(min=1).to(per_kv.dtype)
    per_kv = per_kv / counts[None, :, None]
    pooled = F.max_pool1d(per_kv.reshape(-1, 1, prefix), pool_kernel, stride=1, padding=pool_kernel // 2)
    top = pooled.reshape(batch, num_kv_heads, prefix).topk(budget - window, dim=-1).indices
    recent = torch.arange(prefix, length, device=keys.device).expand(batch, num_kv_heads, window)
    return torch.cat([top.sort(-1).values, recent], dim=-1)


def gated_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window_gate: torch.Tensor,
    head_gate: torch.Tensor,
    policy: WindowKV,
    scaling: float,
    model_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of heads that are a mixture of full and windowed (DuoAttention, Xiao et al. 2024, eq. 1),
    each output scaled by a head gate:

        O_h = g_h · (a_k · O^full_h + (1 - a_k) · O^window_h),   k = the KV head that query head h reads

    with ``O^full`` causal attention, ``O^window`` attention restricted to ``policy`` (sinks + recent
    window), ``a = window_gate`` ``[H_kv]`` (1 = full KV, 0 = windowed KV) and ``g = head_gate`` ``[H_q]``
    (1 = kept, 0 = removed). Shapes: ``query`` ``[B, H_q, N, D]``, ``key``/``value`` ``[B, H_kv, N, D]``
    (a forward without past keys), optional boolean ``model_mask`` ``[B|1, 1, N, N]``; returns ``[B, H_q, N, D]``.
    Gradients reach both gates.
    """
    length = query.shape[2]
    if key.shape[2] != length:
        raise ValueError("gated attention needs a forward without past keys (use_cache=False)")
    positions = torch.arange(length, device=query.device)
    window_mask = allowed_keys(positions, positions, policy)
    if model_mask is not None:
        window_mask = window_mask & model_mask
    full = F.scaled_dot_product_attention(query, key, value, attn_mask=model_mask, is_causal=model_mask is None,
                                          scale=scaling, enable_gqa=True)
    windowed = F.scaled_dot_product_attention(query, key, value, attn_mask=window_mask, scale=scaling,
                                              enable_gqa=True)
    mixing = window_gate.repeat_interleave(query.shape[1] // key.shape[1])[None, :, None, None]
    return head_gate[None, :, None, None] * (windowed + mixing * (full - windowed))

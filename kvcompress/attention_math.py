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


WINDOW_CHUNK = 64  # least query rows per block of sink_window_attention (a row reads <= S + W - 1 + C keys)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where ``allowed``, ``-inf`` elsewhere (SDPA adds a float mask as it is; a boolean one it converts
    on every call)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def sink_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    policy: WindowKV,
    scaling: float,
    chunk: int | None = None,
    model_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sink + window attention of a sequence on itself (no past keys), computed in blocks of query rows.

    Row ``i`` reads key ``j`` iff ``j <= i`` and (``j < S`` or ``i - j < W``) (:func:`allowed_keys` with
    ``policy = WindowKV(S, W)``). The rows ``[s, e)`` of block ``b`` (``s = b·C``, ``e = min(s + C, N)``) can
    only read

        the sinks ``[0, min(S, lo))``  and  the keys ``[lo, e)``,   ``lo = max(0, s - W + 1)``,

    so a block is attention on ``K <= S + W - 1 + C`` keys under a ``[C, K]`` mask. Work is
    ``O(N·(S + W + C)·D)`` and the masks ``O(C·(S + W + C))``, instead of the ``O(N²·D)`` of one dense masked
    call and its ``N x N`` mask; every row still normalises over exactly the keys it may read, so the result
    is the dense one. Every full block with ``lo >= S`` (an *interior* block) reads ``K = S + W - 1 + C`` keys
    in the same pattern (sinks all visible; local key ``c`` visible from row ``r`` iff ``r <= c <= r + W - 1``):
    runs of interior blocks are gathered into one batched SDPA call (at most ``max(1, N // K)`` blocks, so the
    gathered keys stay under ``N`` rows) under one shared mask; the first blocks, the last partial one, and
    every block under a ``model_mask`` run one call each.

    ``C`` defaults to ``max(WINDOW_CHUNK, W // 8)`` (a long window gets fewer, longer blocks: at most 12.5 % more
    keys per row than ``S + W``). With ``W >= N`` (and no ``model_mask``) the window excludes nothing: one causal
    SDPA call.

    Shapes: ``query`` ``[B, H_q, N, D]``, ``key`` / ``value`` ``[B, H_kv, N, D]`` with ``H_q`` a multiple of
    ``H_kv`` (query head ``h`` reads KV head ``h // (H_q / H_kv)``, SDPA's ``enable_gqa``), optional boolean
    ``model_mask`` ``[B|1, 1, N, N]``; returns ``[B, H_q, N, D_v]``.
    """
    length = query.shape[2]
    if key.shape[2] != length:
        raise ValueError(f"sink_window_attention needs as many keys as queries, got {key.shape[2]} and {length}")
    if policy.window >= length and model_mask is None:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    chunk = min(chunk or max(WINDOW_CHUNK, policy.window // 8), length)
    blocks = -(-length // chunk)
    output = query.new_empty(*query.shape[:3], value.shape[-1])
    first_interior = -(-(policy.sinks + policy.window - 1) // chunk)  # the first block with lo >= sinks
    end_interior = first_interior if model_mask is not None else max(first_interior, length // chunk)
    for block in [*range(min(first_interior, blocks)), *range(end_interior, blocks)]:
        _window_block(query, key, value, policy, scaling, block * chunk, min(block * chunk + chunk, length),
                      model_mask, output)
    per_call = max(1, length // (policy.sinks + policy.window - 1 + chunk))
    shared_mask = None
    for first in range(first_interior, end_interior, per_call):
        count = min(per_call, end_interior - first)
        shared_mask = _interior_blocks(query, key, value, policy, scaling, first, count, chunk, shared_mask, output)
    return output


def _block_keys(start: int, end: int, policy: WindowKV, device: torch.device) -> torch.Tensor:
    """Key positions the rows ``[start, end)`` may read: sinks before the window, then the window."""
    low = max(0, start - policy.window + 1)
    sink_end = min(policy.sinks, low)
    local = torch.arange(low, end, device=device)
    return torch.cat([torch.arange(sink_end, device=device), local]) if sink_end else local


def _window_block(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, policy: WindowKV, scaling: float,
                  start: int, end: int, model_mask: torch.Tensor | None, output: torch.Tensor) -> None:
    """One block of :func:`sink_window_attention`, written into ``output[:, :, start:end]``."""
    columns = _block_keys(start, end, policy, query.device)
    allowed = allowed_keys(torch.arange(start, end, device=query.device), columns, policy)
    if model_mask is not None:
        allowed = allowed & model_mask[:, :, start:end].index_select(-1, columns)
    contiguous = columns.numel() == end - int(columns[0])  # no separate sinks: the keys are a slice
    keys = key[:, :, int(columns[0]):end] if contiguous else key.index_select(2, columns)
    values = value[:, :, int(columns[0]):end] if contiguous else value.index_select(2, columns)
    output[:, :, start:end] = F.scaled_dot_product_attention(
        query[:, :, start:end], keys, values, attn_mask=additive_mask(allowed, query.dtype), scale=scaling,
        enable_gqa=True)


def _interior_blocks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, policy: WindowKV,
                     scaling: float, first: int, count: int, chunk: int, shared_mask: torch.Tensor | None,
                     output: torch.Tensor) -> torch.Tensor:
    """``count`` interior blocks from block ``first`` as one SDPA call with the blocks in the batch dimension;
    returns their shared ``[C, K]`` mask (built from the first of them on the first call)."""
    batch, heads, _, dim = query.shape
    kv_heads, start = key.shape[1], first * chunk
    columns = torch.cat([
        torch.arange(policy.sinks, device=query.device).expand(count, -1),
        (torch.arange(count, device=query.device) * chunk + start - policy.window + 1)[:, None]
        + torch.arange(policy.window - 1 + chunk, device=query.device)], dim=1)  # [count, K]
    if shared_mask is None:
        rows = torch.arange(start, start + chunk, device=query.device)
        shared_mask = additive_mask(allowed_keys(rows, columns[0], policy), query.dtype)
    width = columns.shape[1]

    def gathered(tensor: torch.Tensor) -> torch.Tensor:  # [B, H_kv, N, D] -> [B·count, H_kv, K, D]
        picked = tensor.index_select(2, columns.reshape(-1)).view(batch, kv_heads, count, width, -1)
        return picked.transpose(1, 2).reshape(batch * count, kv_heads, width, -1)

    end = start + count * chunk
    queries = query[:, :, start:end].reshape(batch, heads, count, chunk, dim).transpose(1, 2)
    result = F.scaled_dot_product_attention(queries.reshape(batch * count, heads, chunk, dim), gathered(key),
                                            gathered(value), attn_mask=shared_mask, scale=scaling, enable_gqa=True)
    output[:, :, start:end].view(batch, heads, count, chunk, -1).copy_(
        result.view(batch, count, heads, chunk, -1).transpose(1, 2))
    return shared_mask


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
    # the gates (float32, trained) are cast to the activations' dtype: a bfloat16 model stays bfloat16
    mixing = window_gate.to(full.dtype).repeat_interleave(query.shape[1] // key.shape[1])[None, :, None, None]
    return head_gate.to(full.dtype)[None, :, None, None] * (windowed + mixing * (full - windowed))

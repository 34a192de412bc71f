"""Attention rows of a Llama decoder layer for a few query rows, from its own q and k (after RoPE).

``decoder_attention_rows`` is what every attention-guided method scores with: the probabilities the
layer's attention would give ``Q`` query rows over all ``N`` keys, computed as ``softmax(q k^T / sqrt(D))``
on just those rows (O(Q x N x D) per head), so SDPA / flash attention stay on and ``output_attentions``
is never needed. ``full_matrix=True`` materialises the ``N x N`` map first and picks the rows (what
``output_attentions`` does; the reference path of tests and benchmarks).

With ``key_weights`` (soft pruning, training) the keys are reweighted as the layer's additive
``log w`` bias does: ``A'_k = A_k w_k / sum_k' A_k' w_k'``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llava.pruning.attention import attention_probs_for_rows, full_attention_probs
from toolkit_common.dispatch import layer_device, materialized


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]`` for a ``[B, N, ...]`` tensor and ``[B, N']`` index."""
    shape = index.shape + tensor.shape[2:]
    expanded = index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(shape)
    return tensor.gather(1, expanded)


def reweight_keys(probs: torch.Tensor, key_weights: torch.Tensor) -> torch.Tensor:
    """Attention after adding ``log w`` to the logits of every key: ``A'_k = A_k w_k / sum_k' A_k' w_k'``.

    ``probs``: ``[B, H, Q, N]``; ``key_weights``: ``[B, N]`` (soft keep probabilities, 1 outside the
    span). With 0/1 weights this is the attention of the sequence without the dropped keys.
    """
    weighted = probs * key_weights[:, None, None, :]
    return weighted / weighted.sum(dim=-1, keepdim=True)


def decoder_attention_rows(
    decoder_layer: nn.Module,
    layer_input: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    key_valid: torch.Tensor,
    query_index: torch.Tensor,
    key_weights: torch.Tensor | None = None,
    full_matrix: bool = False,
    cached_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, H, Q, N]`` attention probabilities of rows ``query_index`` ``[B, Q]`` at ``decoder_layer``.

    Args:
        decoder_layer: a ``LlamaDecoderLayer`` (``input_layernorm``, ``self_attn.{q,k}_proj``).
        layer_input: ``[B, N, d]`` hidden states entering the layer.
        rope: ``(cos, sin)``, each ``[B, N, head_dim]``, at the tokens' positions.
        key_valid: ``[B, N]`` bool, False for padding keys.
        query_index: ``[B, Q]`` rows to compute (causal: row ``i`` sees keys ``<= i``).
        key_weights: optional ``[B, N]`` soft keep weights of the keys.
        full_matrix: compute the whole ``N x N`` map (reference path).
        cached_keys: optional ``[B, H_kv, N, head_dim]`` keys after RoPE that the layer itself cached for
            ``layer_input`` (the same values, not computed again); unused on the reference path.
    """
    home = layer_input.device
    device = layer_device(decoder_layer)
    with materialized(decoder_layer):
        probs = _attention_rows_on_device(
            decoder_layer, *(None if t is None else t.to(device) for t in (layer_input, *rope, key_valid, query_index, cached_keys)),
            full_matrix,
        )
    probs = probs.to(home)
    return probs if key_weights is None else reweight_keys(probs, key_weights)


def _attention_rows_on_device(
    decoder_layer: nn.Module,
    layer_input: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    query_index: torch.Tensor,
    cached_keys: torch.Tensor | None,
    full_matrix: bool,
) -> torch.Tensor:
    """``decoder_attention_rows`` without key weights, every tensor on the layer's device."""
    attn = decoder_layer.self_attn
    normed = decoder_layer.input_layernorm(layer_input)
    if full_matrix:
        keys = attn.k_proj(normed).view(*normed.shape[:2], -1, attn.head_dim).transpose(1, 2)
        queries = attn.q_proj(normed).view(*normed.shape[:2], -1, attn.head_dim).transpose(1, 2)
        queries, keys = apply_rotary_pos_emb(queries, keys, cos, sin)
        probs = full_attention_probs(queries, keys, key_valid, attn.scaling)
        index = query_index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[-1])
        probs = probs.gather(2, index)
    else:
        keys = cached_keys
        if keys is None:
            keys = attn.k_proj(normed).view(*normed.shape[:2], -1, attn.head_dim).transpose(1, 2)
            _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        rows = gather_rows(normed, query_index)
        queries = attn.q_proj(rows).view(*rows.shape[:2], -1, attn.head_dim).transpose(1, 2)
        queries, _ = apply_rotary_pos_emb(queries, queries, gather_rows(cos, query_index), gather_rows(sin, query_index))
        probs = attention_probs_for_rows(queries, keys, query_index, key_valid, attn.scaling)
    return probs

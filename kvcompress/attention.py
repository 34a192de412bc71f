"""The ``kvcompress`` attention function, registered in transformers' ``AttentionInterface``.

Both Llama and GPT-NeoX attention modules compute q, k, v (after RoPE), call
``past_key_values.update`` and hand the result to the attention function named by
``config._attn_implementation``. Registering ``"kvcompress"`` lets us, without touching the modules:

* run *observers* (per-head statistics, calibration) on q, k, v with SDPA still on;
* honour a :class:`~kvcompress.layout.HeadLayout`: arbitrary query->KV maps after structural head
  removal, windowed KV heads (sinks + window mask), SnapKV compression after prefill;
* work with :class:`~kvcompress.cache.CompressedKVCache` (whose ``update`` returns the layer object) or
  with no cache at all (``use_cache=False``: the layout's masks apply to the whole input).

Per group ``g`` of KV heads with one policy: ``O_g = softmax(Q_g K_g^T · s + M_g) V_g`` where ``M_g``
combines the model's mask (padding) picked at the retained keys' positions and the policy mask of
:func:`~kvcompress.attention_math.allowed_keys`. No ``N x N`` mask is built for a prompt: full groups run
causal SDPA, windowed groups :func:`~kvcompress.attention_math.sink_window_attention` (blocks of query rows
on sinks + window keys); a decode step needs no mask at all. A layer with one policy (the unmodified layout,
StreamingLLM, SnapKV) runs one SDPA call; in general each group runs one GQA call per stretch of query heads
that read consecutive KV heads in runs of equal length (:func:`~kvcompress.cache.attention_calls`), on views
of q, K and V, writing its heads of the ``[B, q, H, D]`` result directly: no per-group or per-head copies of
q or of the output, also where structural removal left a KV head fewer query heads than its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kvcompress.attention_math import (
    allowed_keys,
    gated_window_attention,
    sink_window_attention,
    snapkv_keep_indices,
)
from kvcompress.cache import AttentionCall, CompressedKVLayer, KVGroup
from kvcompress.layout import LAYOUT_ATTRIBUTE, SnapKVPolicy, WindowKV

IMPLEMENTATION = "kvcompress"
OBSERVERS_ATTRIBUTE = "kvcompress_observers"
GATES_ATTRIBUTE = "kvcompress_gates"

Observer = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class LayerGates:
    """Gates of one layer for :func:`~kvcompress.attention_math.gated_window_attention`.

    ``window`` ``[L, H_kv]`` and ``heads`` ``[L, H_q]`` are the whole model's tables, indexed at ``layer``
    in every forward so that the gradients reach them.
    """

    window: torch.Tensor
    heads: torch.Tensor
    layer: int
    policy: WindowKV


def _group_mask(
    group: KVGroup,
    seen_tokens: int,
    q_len: int,
    model_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Boolean mask ``[B|1, H_g|1, q, L]`` for the group's queries (the last ``q_len`` of ``seen_tokens``
    positions), or ``None`` when every retained key is visible."""
    if model_mask is None and q_len == 1:  # a windowed group's ring holds exactly what the new query reads
        return None
    query_positions = torch.arange(seen_tokens - q_len, seen_tokens, device=group.keys.device)
    positions = group.positions.index_select(1, group.query_to_local_kv) if group.positions.shape[1] > 1 \
        else group.positions
    mask = allowed_keys(query_positions, positions, group.policy)
    if model_mask is not None:
        columns = positions[..., None, :].expand(model_mask.shape[0], positions.shape[1], q_len, -1)
        mask = mask & model_mask.expand(-1, positions.shape[1], -1, -1).gather(-1, columns)
    return mask


def _check_boolean(model_mask: torch.Tensor) -> None:
    if model_mask.dtype != torch.bool:
        raise TypeError("the kvcompress attention expects a boolean model mask (sdpa_mask)")


def _group_attention(
    group: KVGroup,
    query: torch.Tensor,
    seen_tokens: int,
    model_mask: torch.Tensor | None,
    scaling: float,
) -> list[tuple[AttentionCall, torch.Tensor]]:
    """Attention of the group's query heads on its retained keys: per :class:`~kvcompress.cache.AttentionCall`,
    its output ``[B, H_call, q, D]``.

    ``query`` is the layer's ``[B, H, q, D]``; each call reads its query heads and KV heads as views. A first
    step of several tokens (no past keys): full / SnapKV heads run causal SDPA (``is_causal``, or the model's
    mask), windowed heads :func:`~kvcompress.attention_math.sink_window_attention` (blocks of query rows on
    sinks + window keys). Later steps: SDPA on the retained keys under :func:`_group_mask` (no mask for one
    new token).
    """
    q_len = query.shape[2]
    first_step = group.keys.shape[2] == q_len == seen_tokens and not group.compressed
    windowed = first_step and q_len > 1 and isinstance(group.policy, WindowKV)
    causal = first_step and q_len > 1 and model_mask is None and not windowed
    if model_mask is not None:
        _check_boolean(model_mask)
    mask = None if windowed or causal else _group_mask(group, seen_tokens, q_len, model_mask)
    results = []
    for call in group.calls:
        keys, values = group.keys[:, call.kv], group.values[:, call.kv]
        if windowed:
            result = sink_window_attention(query[:, call.query], keys, values, group.policy, scaling,
                                           model_mask=model_mask)
        else:
            call_mask = mask if mask is None or mask.shape[1] == 1 else mask[:, call.local_query]
            result = F.scaled_dot_product_attention(query[:, call.query], keys, values, attn_mask=call_mask,
                                                    is_causal=causal, scale=scaling, enable_gqa=True)
        results.append((call, result))
    return results


def _compress_snapkv(group: KVGroup, query: torch.Tensor, scaling: float) -> None:
    """SnapKV selection of a group after a step of at least ``observation_window`` queries (``query``: the
    layer's ``[B, H, q, D]``)."""
    policy: SnapKVPolicy = group.policy
    length = group.keys.shape[2]
    if group.compressed or length <= policy.budget or query.shape[2] < policy.observation_window:
        return
    observation = query[:, :, -policy.observation_window:].index_select(1, group.query_index)
    keys = group.keys.index_select(1, group.query_to_local_kv)
    index = snapkv_keep_indices(observation, keys, group.query_to_local_kv, group.keys.shape[1],
                                scaling, policy.budget, policy.pool_kernel)
    group.keep_per_head(index)


def kvcompress_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor | CompressedKVLayer,
    value: torch.Tensor | CompressedKVLayer,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention with observers, head layouts or gates; falls back to transformers' SDPA when none is set."""
    gates: LayerGates | None = getattr(module, GATES_ATTRIBUTE, None)
    if gates is not None:
        if not isinstance(key, torch.Tensor) or getattr(module, LAYOUT_ATTRIBUTE, None) is not None:
            raise RuntimeError("gated attention runs on the unmodified model without cache (use_cache=False)")
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        output = gated_window_attention(query, key, value, gates.window[gates.layer], gates.heads[gates.layer],
                                        gates.policy, scaling, attention_mask)
        return output.transpose(1, 2).contiguous(), None
    observers = getattr(module, OBSERVERS_ATTRIBUTE, ())
    if observers and not isinstance(key, torch.Tensor):
        raise RuntimeError("attention observers need raw keys: run the analysis with use_cache=False")
    for observer in observers:
        observer(module, query, key, value)
    layout = getattr(module, LAYOUT_ATTRIBUTE, None)
    if isinstance(key, torch.Tensor) and layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if isinstance(key, CompressedKVLayer):
        layer = key
    else:
        if layout is None:
            raise RuntimeError("a CompressedKVLayer reached a module without layout")
        layer = CompressedKVLayer(layout, persistent=False)
        layer.update(key, value)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    parts = []
    for group in layer.groups:
        parts += _group_attention(group, query, layer.seen_tokens, attention_mask, scaling)
        if isinstance(group.policy, SnapKVPolicy) and layer.persistent:
            _compress_snapkv(group, query, scaling)
    layer.finish_step()
    if len(parts) == 1:  # one call for every head (the model's own layout): SDPA's output as transformers takes it
        return parts[0][1].transpose(1, 2).contiguous(), None
    batch, heads, q_len, _ = query.shape
    output = query.new_empty(batch, q_len, heads, parts[0][1].shape[-1])  # each query head in one call
    for call, result in parts:
        output[:, :, call.query] = result.transpose(1, 2)
    return output, None


def register_kvcompress_attention() -> None:
    """Register the ``kvcompress`` attention and mask functions (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, kvcompress_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def use_kvcompress_attention(model: nn.Module) -> Callable[[], None]:
    """Switch the model to the ``kvcompress`` attention; returns the undo step."""
    previous = model.config._attn_implementation
    register_kvcompress_attention()
    model.set_attn_implementation(IMPLEMENTATION)
    return lambda: model.set_attn_implementation(previous)


@contextmanager
def kvcompress_attention(model: nn.Module) -> Iterator[None]:
    """Switch ``model`` to the ``kvcompress`` attention for the duration of the block."""
    undo = use_kvcompress_attention(model)
    try:
        yield
    finally:
        undo()


@contextmanager
def observing(attentions: list[nn.Module], make_observer: Callable[[int], Observer]) -> Iterator[None]:
    """Attach one observer per attention module (``make_observer(layer_index)``) for the block."""
    for index, attention in enumerate(attentions):
        setattr(attention, OBSERVERS_ATTRIBUTE, (*getattr(attention, OBSERVERS_ATTRIBUTE, ()),
                                                 make_observer(index)))
    try:
        yield
    finally:
        for attention in attentions:
            remaining = getattr(attention, OBSERVERS_ATTRIBUTE)[:-1]
            if remaining:
                setattr(attention, OBSERVERS_ATTRIBUTE, remaining)
            else:
                delattr(attention, OBSERVERS_ATTRIBUTE)

"""A KV cache that stores each group of KV heads under its own retention policy.

KV heads of one layer that share a policy (see :mod:`kvcompress.layout`) form a :class:`KVGroup` with
its own key/value tensors ``[B, n_group, L_group, D]`` and the absolute positions of what it keeps.
Full heads hold every token in a buffer that grows ``GROWTH_CHUNK`` tokens at a time (a decode step writes
into it, where a concatenation would copy the whole cache every step); SnapKV heads hold ``budget``
tokens after prefill (then grow the same way); windowed heads hold a
ring buffer of ``sinks + window`` slots: the token at position ``p`` lives in slot ``p`` when
``p < sinks``, else in slot ``sinks + (p - sinks) mod window``. A decode step writes its token over the
one it no longer needs (position ``p - window``) and attends to the whole buffer as it lies: keys carry
their RoPE phase, so their order does not matter, and every slot holds a key the new query may read, so
no mask, no eviction and no copy happen per step. A step of several tokens (prefill, chunks) attends to
the buffer and its new tokens under the sink + window mask, then writes the new tokens the ring keeps.

A group reads the step's keys / values as a view where its KV heads are a contiguous range (every head, in
a layer with one policy: the unmodified model, StreamingLLM, SnapKV); a full group's store copies what it
adopts only when it is a view of a larger tensor (:func:`owned`). A group's ring slots are computed from the
step's first position, a Python int, so a decode step runs no ``nonzero`` and no mask.

``get_seq_length()`` is the number of tokens seen (absolute position of the next token) and
``get_mask_sizes`` describes the mask over *absolute* positions; the ``kvcompress`` attention function
picks the columns of the retained keys from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from kvcompress.adapters import adapter_for
from kvcompress.layout import HeadLayout, KVPolicy, WindowKV, get_layout

GROWTH_CHUNK = 64  # buffers grow by this many token slots (a ring up to its sinks + window slots)


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if it is the only user of its storage, else a copy: a cache that adopts a view (e.g. GPT-NeoX's
    values, a slice of the fused qkv output) would keep the whole storage alive and under-report its bytes."""
    return tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()


def index_range(index: list[int]) -> slice | None:
    """``slice(a, b)`` when ``index == [a, a+1, ..., b-1]`` (a view instead of an ``index_select`` copy), else None."""
    if index and index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1)
    return None


def grown_buffers(buffers: tuple[torch.Tensor, ...], capacity: int, held: int) -> tuple[torch.Tensor, ...]:
    """Buffers like ``buffers`` (``[B, n, L, ...]``) with ``capacity`` token slots, their first ``held`` slots
    copied over (the others are left uninitialised: no view ever reaches past the slots written); ``held = 0``
    only takes the shapes (e.g. from a step's new keys)."""
    grown = []
    for old in buffers:
        buffer = old.new_empty(*old.shape[:2], capacity, *old.shape[3:])
        buffer[:, :, :held] = old[:, :, :held]
        grown.append(buffer)
    return tuple(grown)


@dataclass(frozen=True)
class AttentionCall:
    """One GQA SDPA call of a group: the query heads ``query`` (layer indices; ``local_query``: the same heads
    as indices into the group's query heads) read the group's KV heads ``kv`` (group-local), each KV head
    ``run = #query / #kv`` consecutive query heads."""

    query: slice
    local_query: slice
    kv: slice


def attention_calls(query_index: list[int], query_to_local_kv: list[int]) -> list[AttentionCall]:
    """Cover a group's query heads with the fewest GQA calls on views: consecutive query heads (layer indices
    ``query_index``) reading the same KV head form a run; consecutive runs of equal length on consecutive KV
    heads share a call. The model's own layout is one call; a KV head that lost some of its query heads to
    structural removal starts a new one (e.g. runs 3, 2, 3 -> three calls, 3, 3, 2 -> two)."""
    runs: list[list[int]] = []  # [first query position in the group, length, local kv]
    for position, kv in enumerate(query_to_local_kv):
        if runs and runs[-1][2] == kv and query_index[position] == query_index[position - 1] + 1:
            runs[-1][1] += 1
        else:
            runs.append([position, 1, kv])
    calls: list[list[int]] = []  # [first position, first kv, run length, runs]
    for position, length, kv in runs:
        last = calls[-1] if calls else None
        if last and last[2] == length and kv == last[1] + last[3] \
                and query_index[position] == query_index[position - 1] + 1:
            last[3] += 1
        else:
            calls.append([position, kv, length, 1])
    return [AttentionCall(slice(query_index[first], query_index[first] + length * count),
                          slice(first, first + length * count), slice(kv, kv + count))
            for first, kv, length, count in calls]


@dataclass
class KVGroup:
    """KV heads of one layer sharing a policy, and the query heads that read them.

    ``kv_index``: indices of the group's KV heads in the layer; ``query_index``: indices of the query
    heads reading them; ``query_to_local_kv``: for each of those query heads, its KV head inside the group.
    ``positions`` is ``[1, 1, L]`` (shared by the group) or ``[B, n, L]`` (per head, after SnapKV).
    ``calls``: the group's attention as SDPA calls on views (:func:`attention_calls`); ``kv_slice``:
    ``kv_index`` as a slice when it is a contiguous range (the step's keys are read as a view).
    """

    policy: KVPolicy
    kv_index: torch.Tensor
    query_index: torch.Tensor
    query_to_local_kv: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    compressed: bool = field(default=False)
    calls: list[AttentionCall] = field(default_factory=list)
    kv_slice: slice | None = None

    store: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # full / SnapKV: buffers (keys, values, positions)
    stored: int = 0  # full / SnapKV: slots of ``store`` holding a token
    ring: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # windowed: keys, values, positions
    ring_filled: int = 0  # windowed: slots holding a token
    pending: tuple[torch.Tensor, torch.Tensor, int] | None = None  # windowed: a step's tokens and first position

    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, start: int) -> None:
        """Add new tokens (``keys``/``values`` already restricted to the group's KV heads) at the consecutive
        absolute ``positions`` ``[1, 1, q]``, the first of which is ``start``."""
        if isinstance(self.policy, WindowKV):
            self._append_windowed(keys, values, positions, start)
            return
        self._append_growing(keys, values, positions)

    def _append_growing(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Write the new tokens after the stored ones; the first tensors are adopted as they are (a prefill
        copies nothing unless they are views of a larger tensor: :func:`owned`), later ones grow the buffers
        ``GROWTH_CHUNK`` slots at a time when full."""
        if self.store is None:
            self.store, self.stored = (owned(keys), owned(values), positions), keys.shape[2]
            self._view_store()
            return
        if self.store[2].shape[:2] != (1, 1):
            positions = positions.expand(*self.store[2].shape[:2], -1)
        needed = self.stored + keys.shape[2]
        if needed > self.store[0].shape[2]:
            self.store = grown_buffers(self.store, -(-needed // GROWTH_CHUNK) * GROWTH_CHUNK, self.stored)
        for buffer, new in zip(self.store, (keys, values, positions), strict=True):
            buffer[:, :, self.stored : needed] = new
        self.stored = needed
        self._view_store()

    def _view_store(self) -> None:
        keys, values, positions = self.store
        self.keys, self.values, self.positions = keys[:, :, : self.stored], values[:, :, : self.stored], positions[:, :, : self.stored]

    def keep_per_head(self, index: torch.Tensor) -> None:
        """Keep per-head token indices ``[B, n, K]``."""
        gather = index[..., None].expand(-1, -1, -1, self.keys.shape[-1])
        positions = self.positions.expand(*index.shape[:2], -1).gather(2, index)
        self.store, self.stored = (self.keys.gather(2, gather), self.values.gather(2, gather), positions), index.shape[2]
        self._view_store()
        self.compressed = True

    def _append_windowed(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                         start: int) -> None:
        """One token: into its ring slot, then the buffer is what attention reads. Several: attention reads
        the buffer and the new tokens (masked); ``evict`` writes them into the ring after the step."""
        if keys.shape[2] == 1:
            self._write_ring(keys, values, start)
            self._view_ring()
            return
        self.pending = (keys, values, start)
        if self.ring is None:
            self.keys, self.values, self.positions = keys, values, positions
        else:
            self._view_ring()
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
            self.positions = torch.cat([self.positions, positions], dim=-1)

    def _write_ring(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """Write the tokens at positions ``start, start + 1, ...`` that the ring keeps (sinks, and the
        ``window`` most recent) into their slots: position ``p`` goes to slot ``p`` if ``p < sinks``, else to
        ``sinks + (p - sinks) mod window``."""
        sinks, window = self.policy.sinks, self.policy.window
        count = keys.shape[2]
        end = start + count
        self._grow_ring(min(-(-end // GROWTH_CHUNK) * GROWTH_CHUNK, sinks + window), keys, values)
        ring_keys, ring_values, ring_positions = self.ring
        if count == 1:  # a decode step: one slot, found in Python
            slot = start if start < sinks else sinks + (start - sinks) % window
            ring_keys[:, :, slot] = keys[:, :, 0]
            ring_values[:, :, slot] = values[:, :, 0]
            ring_positions[:, :, slot] = start
        else:
            if start < sinks:
                sink_end = min(end, sinks)
                ring_keys[:, :, start:sink_end] = keys[:, :, : sink_end - start]
                ring_values[:, :, start:sink_end] = values[:, :, : sink_end - start]
                ring_positions[0, 0, start:sink_end] = torch.arange(start, sink_end, device=ring_positions.device)
            low = max(start, sinks, end - window)
            if low < end:
                positions = torch.arange(low, end, device=ring_positions.device)
                slots = sinks + (positions - sinks) % window
                ring_keys.index_copy_(2, slots, keys[:, :, low - start:])
                ring_values.index_copy_(2, slots, values[:, :, low - start:])
                ring_positions.index_copy_(2, slots, positions.view(1, 1, -1))
        self.ring_filled = min(end, sinks + window)

    def _grow_ring(self, slots: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make the ring hold at least ``slots`` slots (it grows with the context, ``GROWTH_CHUNK`` slots at a
        time, up to ``sinks + window``: a short context holds little more than it has seen)."""
        held = 0 if self.ring is None else self.ring[0].shape[2]
        if slots > held:  # slots below sinks + window hold positions in order: copied as they lie
            template = (keys, values, torch.zeros(1, 1, 0, dtype=torch.long, device=keys.device))
            self.ring = grown_buffers(self.ring or template, slots, held)

    def _view_ring(self) -> None:
        ring_keys, ring_values, ring_positions = self.ring
        filled = self.ring_filled
        self.keys, self.values, self.positions = ring_keys[:, :, :filled], ring_values[:, :, :filled], ring_positions[..., :filled]

    def evict(self) -> None:
        """After a step of several tokens, write the ones a windowed group keeps into its ring (SnapKV
        compresses in the attention function)."""
        if self.pending is not None:
            self._write_ring(*self.pending)
            self.pending = None
            self._view_ring()

    def nbytes(self) -> int:
        """Bytes of the key and value tensors the group holds (whole buffers: the ring, or the grown store)."""
        held = self.ring if self.ring is not None else self.store
        return 0 if held is None else held[0].nbytes + held[1].nbytes


def group_heads(layout: HeadLayout) -> list[KVGroup]:
    """Split a layer's heads into groups of KV heads with equal policies (order of first appearance)."""
    groups: list[KVGroup] = []
    policies: list[KVPolicy] = []
    for policy in layout.kv_policies:
        if policy not in policies:
            policies.append(policy)
    for policy in policies:
        kv = [k for k, p in enumerate(layout.kv_policies) if p == policy]
        local = {k: i for i, k in enumerate(kv)}
        queries = [i for i, k in enumerate(layout.query_to_kv) if k in local]
        query_to_local_kv = [local[layout.query_to_kv[i]] for i in queries]
        groups.append(KVGroup(
            policy=policy,
            kv_index=torch.tensor(kv, dtype=torch.long),
            query_index=torch.tensor(queries, dtype=torch.long),
            query_to_local_kv=torch.tensor(query_to_local_kv, dtype=torch.long),
            calls=attention_calls(queries, query_to_local_kv),
            kv_slice=index_range(kv),
        ))
    return groups


class CompressedKVLayer(CacheLayerMixin):
    """One layer of :class:`CompressedKVCache`; ``update`` returns the layer itself for the attention function."""

    is_sliding = False

    def __init__(self, layout: HeadLayout, persistent: bool = True):
        super().__init__()
        self.layout = layout
        self.persistent = persistent
        self.groups = group_heads(layout)
        self.seen_tokens = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        for group in self.groups:
            group.kv_index = group.kv_index.to(self.device)
            group.query_index = group.query_index.to(self.device)
            group.query_to_local_kv = group.query_to_local_kv.to(self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append new keys/values ``[B, H_kv, q, D]``; returns ``(self, self)``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        positions = torch.arange(self.seen_tokens, self.seen_tokens + new, device=key_states.device).view(1, 1, -1)
        for group in self.groups:
            if group.kv_slice is not None:  # a view; a full group's store copies it (``owned``), a ring reads it
                group.append(key_states[:, group.kv_slice], value_states[:, group.kv_slice], positions,
                             self.seen_tokens)
            else:
                group.append(key_states.index_select(1, group.kv_index),
                             value_states.index_select(1, group.kv_index), positions, self.seen_tokens)
        self.seen_tokens += new
        return self, self

    def finish_step(self) -> None:
        """Evict what windowed heads no longer need (called after attention)."""
        if self.persistent:
            for group in self.groups:
                group.evict()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.groups = group_heads(self.layout)
        self.seen_tokens = 0
        self.is_initialized = False

    def nbytes(self) -> int:
        return sum(group.nbytes() for group in self.groups)


class CompressedKVCache(Cache):
    """Cache for a model whose attention modules carry :class:`HeadLayout` s (pass as ``past_key_values``)."""

    def __init__(self, model: nn.Module):
        adapter = adapter_for(model)
        layers = [CompressedKVLayer(get_layout(attention, adapter)) for attention in adapter.attention_modules(model)]
        super().__init__(layers=layers)


def kv_cache_bytes(cache: Cache) -> int:
    """Bytes held by the keys and values of a cache (``DynamicCache`` or :class:`CompressedKVCache`)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, CompressedKVLayer):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None and layer.keys.numel() > 0:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


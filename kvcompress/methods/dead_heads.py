"""``DeadHeadPruner``: remove heads structurally (real FLOPs saved) or zero their output.

* ``structural``: slice the query rows of the removed heads out of the q projection and their columns
  out of the output projection; a KV head goes too once no live query head reads it (its rows leave
  k/v, and its cache with them). GPT-NeoX slices its fused, per-head interleaved ``query_key_value``.
  The ``kvcompress`` attention maps the remaining query heads to their KV heads, so GQA models may lose
  any subset of query heads.
* ``zero``: set the output-projection columns ``W_o[:, h·D:(h+1)·D]`` of the heads to 0, i.e. the
  head's contribution ``W_o^{(h)} o^{(h)}`` is exactly 0 (same function, no FLOPs saved).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn

from kvcompress.adapters import ArchitectureAdapter, adapter_for
from kvcompress.attention import use_kvcompress_attention
from kvcompress.classification import HeadClassification, validate_heads
from kvcompress.layout import LAYOUT_ATTRIBUTE, get_layout, set_layout
from kvcompress.methods.base import CompressionMethod, MethodHandle

MODES = ("structural", "zero")


class DeadHeadPruner(CompressionMethod):
    """Remove (or zero) the given ``(layer, query_head)`` heads, in original head ids."""

    name = "dead"

    def __init__(self, heads: Iterable[tuple[int, int]] | HeadClassification, mode: str = "structural"):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {list(MODES)}")
        self.classification = heads if isinstance(heads, HeadClassification) else None
        self.heads = self.classification.heads_labelled("dead") if self.classification else list(heads)
        self.mode = mode

    def apply(self, model: nn.Module) -> MethodHandle:
        adapter = adapter_for(model)
        shape = adapter.model_shape(model)
        if self.classification is not None:
            self.classification.check_model(model)
        heads = validate_heads(shape, self.heads)
        by_layer: dict[int, set[int]] = defaultdict(set)
        for layer, head in heads:
            by_layer[layer].add(head)
        attentions = adapter.attention_modules(model)
        for layer, removed in by_layer.items():
            if set(get_layout(attentions[layer], adapter).query_heads) <= removed:
                raise ValueError(f"refusing to remove every head of layer {layer}")
        steps = []
        for layer, removed in sorted(by_layer.items()):
            attention = attentions[layer]
            steps.append(self._zero(adapter, attention, removed) if self.mode == "zero"
                         else self._remove(adapter, attention, removed))
        if self.mode == "structural":
            steps.append(use_kvcompress_attention(model))
        return MethodHandle(model, steps, compressed_cache=self.mode == "structural")

    @staticmethod
    def _zero(adapter: ArchitectureAdapter, attention: nn.Module, removed: set[int]) -> Callable[[], None]:
        layout = get_layout(attention, adapter)
        present = [i for i, head in enumerate(layout.query_heads) if head in removed]
        weight = adapter.output_projection(attention).weight
        dim = adapter.head_dim(attention)
        columns = torch.cat([torch.arange(i * dim, (i + 1) * dim) for i in present]) if present else \
            torch.zeros(0, dtype=torch.long)
        saved = weight.detach()[:, columns].clone()
        with torch.no_grad():
            weight[:, columns] = 0

        def undo() -> None:
            with torch.no_grad():
                weight[:, columns] = saved
        return undo

    @staticmethod
    def _remove(adapter: ArchitectureAdapter, attention: nn.Module, removed: set[int]) -> Callable[[], None]:
        layout = get_layout(attention, adapter)
        previous_layout = getattr(attention, LAYOUT_ATTRIBUTE, None)
        projections = adapter.projections(attention)
        kept_queries = [head for head in layout.query_heads if head not in removed]
        live_kv = {layout.kv_heads[layout.query_to_kv[i]] for i, head in enumerate(layout.query_heads)
                   if head not in removed}
        new_layout = layout.keeping(set(kept_queries), live_kv)
        query_index = [i for i, head in enumerate(layout.query_heads) if head not in removed]
        kv_index = [k for k, kv in enumerate(layout.kv_heads) if kv in live_kv]
        adapter.keep_heads(attention, query_index, kv_index)
        set_layout(attention, new_layout)

        def undo() -> None:
            adapter.restore_projections(attention, projections)
            set_layout(attention, previous_layout)
        return undo

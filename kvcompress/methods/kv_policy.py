"""Base of the methods that change how KV heads are cached (windowed heads, StreamingLLM, SnapKV)."""

from __future__ import annotations

from abc import abstractmethod

from torch import nn

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.attention import use_kvcompress_attention
from kvcompress.layout import HeadLayout, KVPolicy
from kvcompress.methods.base import CompressionMethod, MethodHandle, edit_layouts


class KVPolicyMethod(CompressionMethod):
    """Assigns a :data:`~kvcompress.layout.KVPolicy` to some ``(layer, kv_head)`` (original ids)."""

    @abstractmethod
    def policies(self, model: nn.Module, shape: ModelShape) -> dict[tuple[int, int], KVPolicy]:
        """Policy per ``(layer, kv_head)``; heads not listed keep their current policy."""

    def apply(self, model: nn.Module) -> MethodHandle:
        adapter = adapter_for(model)
        policies = self.policies(model, adapter.model_shape(model))
        by_layer: dict[int, dict[int, KVPolicy]] = {}
        for (layer, kv), policy in policies.items():
            by_layer.setdefault(layer, {})[kv] = policy

        def edit(layer: int, layout: HeadLayout) -> HeadLayout:
            return layout.with_policies(by_layer.get(layer, {}))

        steps = [edit_layouts(model, adapter, edit), use_kvcompress_attention(model)]
        return MethodHandle(model, steps, compressed_cache=True)


def all_kv_heads(shape: ModelShape) -> list[tuple[int, int]]:
    """Every ``(layer, kv_head)`` of a model."""
    return [(layer, kv) for layer in range(shape.num_layers) for kv in range(shape.num_kv_heads)]

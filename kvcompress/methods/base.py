"""The common object API of every method: ``handle = method.apply(model)`` ... ``handle.undo()``.

A handle is also a context manager (``with method.apply(model) as handle: ...``) and builds the KV
cache that goes with the modified model (``handle.new_cache()``). Undo steps run in reverse order;
handles of stacked methods must be undone last-in first-out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from kvcompress.adapters import ArchitectureAdapter
from kvcompress.cache import CompressedKVCache
from kvcompress.layout import LAYOUT_ATTRIBUTE, HeadLayout, get_layout, set_layout


class MethodHandle:
    """Undo handle of an applied method (also a context manager that undoes on exit)."""

    def __init__(self, model: nn.Module, undo_steps: list[Callable[[], None]], compressed_cache: bool):
        self.model = model
        self._undo_steps = undo_steps
        self.compressed_cache = compressed_cache
        self.active = True

    def new_cache(self) -> Cache:
        """A fresh KV cache for generation with the modified model."""
        return CompressedKVCache(self.model) if self.compressed_cache else DynamicCache(config=self.model.config)

    def undo(self) -> None:
        """Restore the model as it was before ``apply`` (idempotent)."""
        while self._undo_steps:
            self._undo_steps.pop()()
        self.active = False

    def __enter__(self) -> MethodHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.undo()


class CompressionMethod(ABC):
    """A reversible model modification."""

    name: str

    @abstractmethod
    def apply(self, model: nn.Module) -> MethodHandle:
        """Modify ``model`` in place and return the handle that undoes it."""


def edit_layouts(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    edit: Callable[[int, HeadLayout], HeadLayout],
) -> Callable[[], None]:
    """Replace every layer's layout by ``edit(layer, layout)``; returns the undo step."""
    attentions = adapter.attention_modules(model)
    previous = [getattr(attention, LAYOUT_ATTRIBUTE, None) for attention in attentions]
    for layer, attention in enumerate(attentions):
        set_layout(attention, edit(layer, get_layout(attention, adapter)))

    def undo() -> None:
        for attention, layout in zip(attentions, previous, strict=True):
            set_layout(attention, layout)
    return undo


class ComposedMethod(CompressionMethod):
    """Several methods applied in order (undone in reverse)."""

    def __init__(self, methods: list[CompressionMethod]):
        self.methods = methods
        self.name = "+".join(method.name for method in methods)

    def apply(self, model: nn.Module) -> MethodHandle:
        handles = [method.apply(model) for method in self.methods]
        steps = [handle.undo for handle in handles]
        return MethodHandle(model, steps, any(handle.compressed_cache for handle in handles))


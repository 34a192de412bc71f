"""Reuse the unmodified layers of a run: capture each layer's input, restart the forward at a layer.

An intervention at layer ``l`` (a removed or windowed head) cannot change layers ``< l``, so a
calibration that measures many interventions runs the full model once, keeps the residual stream
entering every layer, and then runs only layers ``l .. L-1`` per intervention, fed with the stored
stream: on average half the work. The output is the same computation as a full forward (tested to be
bit-identical on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kvcompress.adapters import adapter_for


def layer_inputs(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, inputs)``: one forward of ``model`` (no cache) and the hidden states ``[B, N, d]`` entering
    each decoder layer."""
    decoder, _ = adapter_for(model).decoder(model)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())

    hooks = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in decoder.layers]
    try:
        logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()
    return logits, captured


@contextmanager
def starting_at_layer(model: nn.Module, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Inside the block, a forward runs only decoder layers ``layer ..`` and feeds them ``hidden`` (the
    stream that entered ``layer`` in an unmodified run) in place of the token embeddings."""
    decoder, embedding_name = adapter_for(model).decoder(model)
    layers = decoder.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(layers) - 1}")
    embedding = getattr(decoder, embedding_name)
    hook = embedding.register_forward_hook(lambda module, args, output: hidden)
    decoder.layers = nn.ModuleList(list(layers)[layer:])
    try:
        yield
    finally:
        decoder.layers = layers
        hook.remove()

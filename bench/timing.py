"""The LLaVA-shaped prefill that the bench scripts time, and the timer itself."""

from __future__ import annotations

import time

import torch

from toolkit_common.devices import synchronize

SYSTEM_TOKENS, IMAGE_TOKENS, QUESTION_TOKENS = 35, 576, 60
AGG_LAYER = 2
LAYERS = 32


def time_prefill(model, embeds: torch.Tensor, span: tuple[int, int]) -> float:
    """Milliseconds of one prefill of ``embeds`` (span ``span``) with a KV cache (CUDA / MPS synchronised:
    ``toolkit_common.devices.synchronize``)."""
    synchronize(embeds.device)
    started = time.perf_counter()
    with torch.no_grad():
        model(inputs_embeds=embeds, prune_span=span, use_cache=True)
    synchronize(embeds.device)
    return (time.perf_counter() - started) * 1000.0

"""The LLaVA-shaped prefill that the bench scripts time, and the timer itself."""

from __future__ import annotations

import time

import torch

SYSTEM_TOKENS, IMAGE_TOKENS, QUESTION_TOKENS = 35, 576, 60
AGG_LAYER = 2
LAYERS = 32


def time_prefill(model, embeds: torch.Tensor, span: tuple[int, int]) -> float:
    """Milliseconds of one prefill of ``embeds`` (span ``span``) with a KV cache (CUDA synchronised)."""
    if embeds.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        model(inputs_embeds=embeds, prune_span=span, use_cache=True)
    if embeds.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000.0

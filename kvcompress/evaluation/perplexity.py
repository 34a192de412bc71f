"""Strided-window perplexity through the KV cache, so cache compression is part of what is measured.

Windows of ``max_length`` tokens start every ``stride`` tokens. Each window is fed as a context of
``max_length - stride`` tokens (prefill into a fresh cache, which the method may compress) followed
by the ``stride`` target tokens in one forward pass on that cache; the loss is taken on the targets:

    PPL = exp( Σ_targets -log p(x_t | x_<t) / #targets )

For an uncompressed model this equals the transformers-docs strided perplexity, except that the very
first ``max_length - stride`` tokens are context only (never scored).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from toolkit_common.transformers_compat import cache_kwargs


def stride_problem(stride: int, max_length: int) -> str | None:
    """Why strided windows of ``max_length`` tokens every ``stride`` tokens cannot work (each window needs a
    context of ``max_length - stride`` > 0 tokens and ``stride`` > 0 scored ones), or None."""
    if not 0 < stride < max_length:
        return f"--ppl-stride {stride} must lie in [1, --ppl-max-length - 1] = [1, {max_length - 1}]"
    return None


def strided_perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    new_cache: Callable[[], Cache],
    max_length: int = 512,
    stride: int = 256,
    max_windows: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Perplexity of ``tokens`` ``[N]``; ``new_cache()`` gives the method's empty cache per window."""
    if not 0 < stride < max_length:
        raise ValueError(f"need 0 < stride < max_length, got stride={stride}, max_length={max_length}")
    context = max_length - stride
    starts = list(range(0, tokens.numel() - max_length + 1, stride))[:max_windows]
    if not starts:
        raise ValueError(f"text of {tokens.numel()} tokens is shorter than one window of {max_length}")
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
            window = tokens[start : start + max_length][None].to(device)
            cache = new_cache()
            prefill = model(window[:, :context], use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
            targets = model(window[:, context:-1], use_cache=True, **cache_kwargs(cache))
            logits = torch.cat([prefill.logits[:, -1:], targets.logits], 1)
            total_nll += F.cross_entropy(logits[0].float(), window[0, context:], reduction="sum").item()
            total_tokens += stride
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": len(starts)}

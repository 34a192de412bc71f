"""The query-agnostic protocol: compress the context before the question arrives.

In multi-turn chat or with prefix caching the KV cache of a context is built (and compressed) once and
questions come later. A prompt ``x = [c; q]`` (context ``c``, question ``q``, cut from one tokenization
of ``x``) is run as

1. prefill of ``c`` alone into the method's fresh cache: the method compresses here (SnapKV's
   observation window is ``c``'s last tokens, so it cannot see ``q``);
2. ``q`` fed on that cache, then greedy decoding (:func:`~kvcompress.evaluation.timing.greedy_generate`
   with the cache already holding ``c``).

For an uncompressed cache this gives the logits of a single prefill of ``x`` (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache

from kvcompress.cache import kv_cache_bytes
from kvcompress.evaluation.timing import GenerationTiming, greedy_generate
from toolkit_common.transformers_compat import cache_kwargs


@dataclass
class QueryAgnosticRun:
    generation: GenerationTiming  # question "prefill" on the context's cache, then greedy steps
    context_kv_bytes: int  # K and V bytes held right after the context prefill (after compression)


def prefill_context(model: nn.Module, context_ids: torch.Tensor, cache: Cache) -> int:
    """Prefill ``context_ids`` ``[1, C]`` into ``cache``; returns the K/V bytes the cache then holds."""
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=context_ids.to(device), use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
    return kv_cache_bytes(cache)


def query_agnostic_generate(model: nn.Module, context_ids: torch.Tensor, question_ids: torch.Tensor,
                            max_new_tokens: int, cache: Cache) -> QueryAgnosticRun:
    """Context prefill (compressed by the method), then the question and ``max_new_tokens`` greedy tokens."""
    context_bytes = prefill_context(model, context_ids, cache)
    return QueryAgnosticRun(greedy_generate(model, question_ids, max_new_tokens, cache), context_bytes)

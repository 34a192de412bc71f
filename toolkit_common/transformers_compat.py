"""The name transformers gives the KV-cache argument: ``past_key_values`` up to 5.23, ``cache`` from 5.24.

transformers 5.24 renamed ``past_key_values`` to ``cache`` in model forwards, decoder layers, mask
creation and model outputs (the old name is deprecated until 5.40). Our subclassed forwards accept both
names and pass the cache on under the installed version's name, so 5.20-5.23 and 5.24+ both work.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import LlamaModel

CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{CACHE_ARG: cache}``, to pass a cache to a transformers model, layer or mask function."""
    return {CACHE_ARG: cache}


def output_cache(outputs: Any) -> Any:
    """The cache a transformers model output carries (``outputs.cache`` or ``outputs.past_key_values``)."""
    return getattr(outputs, CACHE_ARG, None)


def resolve_cache(past_key_values: Any, cache: Any) -> Any:
    """The cache of a forward call that may name it either way (``past_key_values`` or ``cache``)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values

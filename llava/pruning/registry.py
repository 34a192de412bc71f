"""Lookups of pruning methods by name, used by the config, the builder, the CLI and the tests.

Methods register themselves (``llava.pruning.methods.base.register_method``) when the
``llava.pruning.methods`` package is imported; every lookup here imports it first.

Legacy names (FastV's config fields and command-line flags) map onto method parameters through one
table, ``PARAMETER_ALIASES``; an alias and its parameter given together are an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import llava.pruning.methods  # noqa: F401  (registers the built-in methods)
from llava.pruning.methods.base import REGISTERED_METHODS, PruningMethod

PARAMETER_ALIASES: dict[str, str] = {
    "fast_v_agg_layer": "agg_layer",
    "fast_v_attention_rank": "keep",
    "fast_v_token_selection_method": "token_selection_method",
    "fast_v_weighted_alpha": "weighted_alpha",
    "H": "heads",
}


def available_methods() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(REGISTERED_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; an unknown name is an error listing the valid ones."""
    if name not in REGISTERED_METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid: {', '.join(available_methods())}")
    return REGISTERED_METHODS[name]


def use_fast_v_method() -> str:
    """The method the legacy ``use_fast_v`` switch turns on (config field, ``--use-fast-v``): the one
    registered method whose class sets ``use_fast_v``."""
    names = [name for name, cls in REGISTERED_METHODS.items() if cls.use_fast_v]
    if len(names) != 1:
        raise RuntimeError(f"exactly one registered method must set use_fast_v, found {sorted(names)}")
    return names[0]


def canonical_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` with legacy names (``PARAMETER_ALIASES``) replaced by the method parameter they set."""
    resolved: dict[str, Any] = {}
    for key, value in (params or {}).items():
        name = PARAMETER_ALIASES.get(key, key)
        if name in resolved:
            raise ValueError(f"parameter {name!r} given twice (as {name!r} and as its alias {key!r})")
        resolved[name] = value
    return resolved


def build_method(name: str, params: Mapping[str, Any] | None = None) -> PruningMethod:
    """Method ``name`` with ``params`` (legacy names accepted); unknown parameters are an error."""
    return method_class(name).from_params(canonical_params(params))


def plan_method(
    name: str,
    visual_token_num: float | None,
    num_layers: int,
    span: int | None,
    params: Mapping[str, Any] | None = None,
) -> PruningMethod:
    """A ready method instance: for a ``visual_token_num`` budget (equivalent tokens) through the method's
    ``for_budget``, else from ``params`` alone."""
    if visual_token_num is None:
        return build_method(name, params)
    if span is None:
        raise ValueError("a visual_token_num budget needs the span length (the image's token count)")
    return method_class(name).for_budget(visual_token_num, num_layers, span, canonical_params(params))


def method_from_config(config: Any) -> PruningMethod | None:
    """The method a ``PruningLlamaConfig`` asks for (``pruning_method``, or ``use_fast_v_method()`` (FastV) when
    ``use_fast_v``): ``pruning_params`` plus FastV's config fields that are set; None when pruning is off."""
    name = getattr(config, "pruning_method", None)
    if name is None and getattr(config, "use_fast_v", False):
        name = use_fast_v_method()
    if name is None:
        return None
    legacy = {key: getattr(config, key, None) for key in PARAMETER_ALIASES}
    legacy = {key: value for key, value in legacy.items() if value is not None}
    params = {**legacy, **(getattr(config, "pruning_params", None) or {})}
    try:
        return build_method(name, params)
    except ValueError as error:
        given = ", ".join(sorted(legacy))
        raise ValueError(f"{error} (config fields set: {given or 'none'})") from error

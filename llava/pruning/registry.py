"""Registry of pruning methods by name, used by the config, the builder, the CLI and the tests."""

from __future__ import annotations

from typing import Any

from llava.pruning.methods.base import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Sorted names of every registered method."""
    import llava.pruning.methods  # noqa: F401  (registers the built-in methods)

    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; an unknown name is an error listing the valid ones."""
    valid = available_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid: {', '.join(valid)}")
    return _METHODS[name]


def check_method_params(cls: type[PruningMethod], params: dict | None) -> None:
    """Raise ``ValueError`` for ``pruning_params`` keys the method does not read (a typo would be ignored)."""
    unknown = sorted(set(params or {}) - set(cls.params))
    if unknown:
        valid = ", ".join(cls.params) if cls.params else "none (only config fields such as fast_v_attention_rank)"
        raise ValueError(f"{cls.name}: unknown parameters {unknown}; valid parameters: {valid}")


def method_from_config(config: Any) -> PruningMethod | None:
    """The method a config asks for (``pruning_method``, or ``fastv`` when ``use_fast_v``), or None."""
    name = getattr(config, "pruning_method", None)
    if name is None and getattr(config, "use_fast_v", False):
        name = "fastv"
    if name is None:
        return None
    cls = method_class(name)
    check_method_params(cls, getattr(config, "pruning_params", None))
    return cls.from_config(config)

"""Values read from a command line or a config file, checked against a dataclass field's type annotation.

``typed_value(value, annotation)`` accepts what the annotation promises (``int``, ``float``, ``bool``, ``str``,
``tuple[int, ...]`` / ``list[float]``, ``X | None``) and raises ``TypeError`` otherwise: a bool is never a
number, an int is a float, a whole float (``10.0``) is read as the int, a float with a fraction is not an int.
``type_text`` names the expected type for the error message. Other annotations (``dict[str, Any]``, ``Any``)
accept any value.
"""

from __future__ import annotations

import types
import typing
from typing import Any

SEQUENCE_ORIGINS = (tuple, list)


def typed_value(value: Any, annotation: Any) -> Any:
    """``value`` as type ``annotation`` (a whole float for an int becomes that int); ``TypeError`` if it is not one."""
    if is_union(annotation):
        return _typed_union(value, typing.get_args(annotation))
    if typing.get_origin(annotation) in SEQUENCE_ORIGINS:
        if not isinstance(value, tuple | list):
            raise TypeError(value)
        element = _element_type(annotation)
        return type(value)(typed_value(item, element) for item in value)
    return _typed_scalar(value, annotation)


def _typed_union(value: Any, options: tuple[Any, ...]) -> Any:
    """``value`` as the first of ``options`` it is (None only when ``NoneType`` is one of them)."""
    if value is None and type(None) in options:
        return None
    for option in (o for o in options if o is not type(None)):
        try:
            return typed_value(value, option)
        except TypeError:
            continue
    raise TypeError(value)


def _typed_scalar(value: Any, annotation: Any) -> Any:
    """``value`` as the plain type ``annotation``: bool is never a number, an int is a float, a whole float an int."""
    if annotation is Any or not isinstance(annotation, type):
        return value
    if isinstance(value, bool) and annotation is not bool:
        raise TypeError(value)
    if annotation is float and isinstance(value, int | float):
        return value
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, annotation):
        raise TypeError(value)
    return value


def _element_type(annotation: Any) -> Any:
    """The element type of ``tuple[X, ...]`` / ``list[X]`` (``Any`` when unparameterised)."""
    arguments = typing.get_args(annotation)
    return arguments[0] if arguments else Any


def is_union(annotation: Any) -> bool:
    """Whether ``annotation`` is ``X | Y`` (or ``Optional[X]``)."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def type_text(annotation: Any) -> str:
    """How an error names a type: ``an int``, ``a list of int``, ``an int or None``, ``a bool (true or false)``."""
    if is_union(annotation):
        return " or ".join(type_text(option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) in SEQUENCE_ORIGINS:
        element = _element_type(annotation)
        return f"a list of {getattr(element, '__name__', str(element))}"
    if annotation is bool:
        return "a bool (true or false)"
    name = getattr(annotation, "__name__", str(annotation))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def typed_field_value(where: str, value: Any, annotation: Any) -> Any:
    """``typed_value``, with a ``ValueError`` naming ``where`` (the parameter), the value and the expected type."""
    try:
        return typed_value(value, annotation)
    except TypeError:
        raise ValueError(f"{where}={value!r} must be {type_text(annotation)}, got {type(value).__name__}") from None

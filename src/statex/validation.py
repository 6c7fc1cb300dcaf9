"""Type checks of configuration values against their dataclass annotations, with one-line errors.

Every typed configuration (model configs and their per-layer specs, the training config, evaluation and
comparison settings) runs through ``check_field_types`` before its values are used, so a string where a number
belongs, a float where an integer belongs or a NaN is refused by name instead of failing deep inside the work.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable

from statex.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "a mapping"}


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
    if origin in (tuple, list):
        return "a list" if origin is list else f"a list of {len(typing.get_args(hint))} numbers"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def value_matches(value: Any, hint: Any, finite: bool = True) -> bool:
    """Does ``value`` (as read from JSON or YAML) have the annotated type? Floats must be finite unless
    ``finite`` is False; an integer is accepted where a float is wanted, a bool never counts as a number."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, arg, finite) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return not finite or math.isfinite(value)
        except OverflowError:
            return False
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        return (isinstance(value, (tuple, list)) and len(value) == len(args)
                and all(value_matches(v, a, finite=False) and not (isinstance(v, float) and math.isnan(v))
                        for v, a in zip(value, args)))
    if origin is list or hint is list:
        return isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_field_types(obj: Any, where: str, label: Callable[[str], str] = lambda name: name,
                      error: type[Exception] = ConfigError) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if not value_matches(value, hints[f.name]):
            raise error(f"{where}{label(f.name)} must be {describe_type(hints[f.name])}, got {short_repr(value)}")


def merge_option_layers(cls, file_values: dict[str, Any] | None, overrides: dict[str, Any] | None, what: str,
                        error=ConfigError) -> dict[str, Any]:
    """The values of a typed options dataclass ``cls``: a config file's, then the flags' on top; a name ``cls``
    does not have is refused, naming where it came from."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for source, values in (("config file", file_values or {}), ("flags", overrides or {})):
        unknown = sorted(set(values) - names)
        if unknown:
            raise error(f"unknown {what} option(s) in {source}: {', '.join(unknown)}")
        merged.update(values)
    return merged

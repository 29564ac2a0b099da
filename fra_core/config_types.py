"""Type checks for job config values read from YAML / dicts (`JobConfig.from_dict`).

YAML is loose: `include_diagonal: "no"` is the string "no" (truthy, so it would mean True) and `layer: 1.5`
is a float. Every field is checked against its declared type and refused with one line naming the config,
the field, the value and the expected type. Accepted: bool only for bool (not 0/1), int for int (not
True/False, not 1.5; a float with an integral value such as 2.0 neither), int or float for float, str for
str, a list or tuple of checked items for `tuple[T, ...]`, None for an Optional, members of a Literal.
"""

from __future__ import annotations

import types
import typing
from typing import Any

_MISMATCH = object()


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "list"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """`value` as a value of type `tp` (lists become tuples), or `_MISMATCH`."""
    if tp is Any or tp is None:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            got = coerce(value, arg)
            if got is not _MISMATCH:
                return got
        return _MISMATCH
    if origin is typing.Literal:
        return value if value in typing.get_args(tp) else _MISMATCH
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            # a YAML scalar for a list field means a list of one (`q_saes: my-sae`, `heads: 3`)
            homogeneous = len(args) == 2 and args[1] is Ellipsis
            one = coerce(value, args[0]) if homogeneous and value is not None else _MISMATCH
            if one is _MISMATCH:
                return _MISMATCH
            return () if one == "" and args[0] is str else (one,)  # an empty string: no item
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            return _MISMATCH
        items = [coerce(v, t) for v, t in zip(value, item_types)]
        return _MISMATCH if any(i is _MISMATCH for i in items) else tuple(items)
    if tp is type(None):
        return None if value is None else _MISMATCH
    if tp is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if tp is float:
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else _MISMATCH
    if tp is str:
        return value if isinstance(value, str) else _MISMATCH
    if origin is not None or not isinstance(tp, type):
        return value  # a type these configs do not use (dict, ...): left to the config's own validation
    return value if isinstance(value, tp) else _MISMATCH


def check_field(cls_name: str, name: str, value: Any, tp: Any, error: type[Exception] = ValueError) -> Any:
    """The checked (and list -> tuple converted) value; `error` (the caller's ConfigError) with one line
    otherwise."""
    got = coerce(value, tp)
    if got is _MISMATCH:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise error(f"{cls_name}: {name} = {shown} ({_name(type(value))}); expected {_name(tp)}")
    return got

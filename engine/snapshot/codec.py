"""Plain dataclasses ↔ JSON values, checked against the field annotations on the way back.

The snapshot's state is a tree of dataclasses (``engine/snapshot/state.py`` and each device's
own ``*State``); ``bytes`` travel as base64 text. Decoding checks every value's type against
its annotation, so a state written by another version of the engine, or edited by hand, is one
clear error naming the field, never a half-built object that fails later inside KVM.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import types
import typing
from typing import Any


class StateError(ValueError):
    """A state value does not match its declaration (names the field path)."""


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _int_rows(row: Any, data: list[Any]) -> tuple[tuple[int, ...], ...] | None:
    """``data`` as a tuple of int tuples when ``row`` is a fixed tuple of ints and every row
    fits it; None otherwise (the general path then names what is wrong)."""
    if typing.get_origin(row) is not tuple:
        return None
    args = typing.get_args(row)
    if not args or any(a is not int for a in args):
        return None
    n = len(args)
    for v in data:
        if type(v) is not list or len(v) != n or not all(type(x) is int for x in v):
            return None
    return tuple(map(tuple, data))


def from_json(tp: Any, data: Any, where: str = "state") -> Any:
    """A value of type ``tp`` from its JSON form; ``StateError`` on any mismatch."""
    if isinstance(tp, types.UnionType):
        if data is None and type(None) in tp.__args__:
            return None
        members = [a for a in tp.__args__ if a is not type(None)]
        return from_json(members[0], data, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(data, list):
            raise StateError(f"{where}: expected a list, found {type(data).__name__}")
        args = typing.get_args(tp)
        ints = all(a is int for a in args) and len(args) == len(data)
        if ints and all(type(v) is int for v in data):  # a row of ints: one pass
            return tuple(data)
        if len(args) == 2 and args[1] is Ellipsis:
            rows = _int_rows(args[0], data)
            if rows is not None:  # a table of int rows (CPUID, MSRs): no call per value
                return rows
            return tuple(from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise StateError(f"{where}: expected {len(args)} values, found {len(data)}")
        return tuple(
            from_json(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, data, strict=True))
        )
    if origin is dict:
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object, found {type(data).__name__}")
        return dict(data)
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object, found {type(data).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        extra = set(data) - names
        if extra:
            raise StateError(f"{where}: unknown field {sorted(extra)[0]!r}")
        missing = names - set(data)
        if missing:
            raise StateError(f"{where}: field {sorted(missing)[0]!r} is missing")
        return tp(**{n: from_json(hints[n], data[n], f"{where}.{n}") for n in names})
    if tp is bytes:
        if not isinstance(data, str):
            raise StateError(f"{where}: expected base64 text, found {type(data).__name__}")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise StateError(f"{where}: not valid base64") from None
    if tp is bool:
        if not isinstance(data, bool):
            raise StateError(f"{where}: expected true or false, found {data!r:.40}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise StateError(f"{where}: expected an integer, found {data!r:.40}")
        return data
    if tp is float:
        if not isinstance(data, int | float) or isinstance(data, bool):
            raise StateError(f"{where}: expected a number, found {data!r:.40}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise StateError(f"{where}: expected text, found {data!r:.40}")
        return data
    raise StateError(f"{where}: cannot decode a {tp!r}")  # a declaration this codec lacks

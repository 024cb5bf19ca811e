"""The properties an option takes straight from the model's key declarations, both ways.

A key declared with ``sv=(option, property[, type])`` (``launcher.keys``) is an optional
property of that option's ``key=value`` list: ``emit_props`` writes it when it differs from its
default, ``read_props`` reads it back with the declared type and limits, and the option's
parser accepts it (``prop_names``). Each ``emit_<option>``/``parse_<option>`` writes the
option's fixed part itself (ids, consumed backends, placement, required keys) and the checks
that span properties, and calls these for the rest; so a new optional key of an option is one
declaration on the model and nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from launcher import keys as k
from launcher.compile.stratovirt.common import PathFn, PathKind, cannot, size_text
from launcher.compile.stratovirt.props import (
    Props,
    read_int,
    read_intlist,
    read_size,
    write_intlist,
)

_BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}


@cache
def option_keys(cls: type, option: str) -> tuple[k.Spec, ...]:
    """The optional keys of ``cls`` that ``option`` holds, in declaration order."""
    return tuple(
        s
        for s in k.specs(cls)
        if isinstance(s.decl.sv, tuple) and s.decl.sv[0] == option and not s.required
    )


def _sv(s: k.Spec) -> tuple[str, ...]:
    """The ``(option, property[, type])`` declaration of a key that ``option_keys`` returned."""
    sv = s.decl.sv
    assert isinstance(sv, tuple), s.name  # option_keys keeps only tuple declarations
    return sv


def prop_names(cls: type, option: str) -> set[str]:
    """The property names those keys use (``fds`` also answers to ``fd``)."""
    names = set()
    for s in option_keys(cls, option):
        prop = _sv(s)[1]
        names.add(prop)
        if s.kind == k.FDS:
            names.add(prop[:-1])
    return names


def emit_props(
    obj: Any, option: str, px: PathFn | None = None, where: str = ""
) -> list[tuple[str, Any]]:
    """``(property, value)`` for each declared key of ``option`` whose value is not its default."""
    out: list[tuple[str, Any]] = []
    cls: type = type(obj)
    for s in option_keys(cls, option):
        value = getattr(obj, s.attr)
        if value is None or value == s.default_value():
            continue
        sv = _sv(s)
        prop, spelling = sv[1], sv[2:]
        kind = s.kind
        if kind == k.BOOL:
            out.append((prop, value if spelling == ("flag",) else ("on" if value else "off")))
        elif kind == k.ENUM:
            out.append((prop, str(value)))
        elif kind == k.PATH:
            assert px is not None, prop
            out.append((prop, px(value, PathKind(s.decl.io), f"{where}.{s.name}")))
        elif kind == k.FDS:
            out.append(
                (prop[:-1], value[0]) if len(value) == 1 else (prop, ":".join(map(str, value)))
            )
        elif kind == k.SIZE:
            out.append((prop, size_text(value, f"{where}.{s.name}")))
        elif kind == k.INTLIST:
            out.append((prop, write_intlist(value)))
        elif kind in (k.INT, k.STR):
            out.append((prop, value))
        else:
            raise cannot(f"{where}.{s.name}: no StratoVirt spelling for a {kind} value", where)
    return out


def read_props(
    p: Props, cls: type, option: str, path: Callable[[str, PathKind], str] | None = None
) -> dict[str, Any]:
    """The model fields of the declared keys of ``option`` in ``p`` (defaults where absent);
    ``path`` turns a path's text into the host path (the importer's ``State.path``)."""
    out: dict[str, Any] = {}
    for s in option_keys(cls, option):
        sv = _sv(s)
        prop, spelling = sv[1], sv[2:]
        kind = s.kind
        value: Any
        if kind == k.FDS:
            value = _fds(p, prop[:-1]) or _fds(p, prop)
        elif not p.has(prop):
            value = s.default_value()
        elif kind == k.BOOL:
            value = p.flag(prop) if spelling == ("flag",) else p.bool(prop)
        elif kind == k.ENUM:
            text = p.raw(prop)
            choices = [e.value for e in s.type]
            if text not in choices:
                listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
                raise p.error(f"Invalid {prop} '{text}'", prop, f"use {prop}={listed}")
            value = s.type(text)
        elif kind == k.INT and spelling == ("i32",):
            value = p.typed(prop, read_int)
        elif kind == k.INT:
            value = _uint(p, prop, _BITS[spelling[0]] if spelling else 64, s.decl.limits)
        elif kind == k.SIZE:
            value = p.typed(prop, read_size)
        elif kind == k.INTLIST:
            value = p.typed(prop, read_intlist)
        elif kind == k.PATH:
            assert path is not None, prop
            value = path(p.raw(prop) or "", PathKind(s.decl.io))
        else:
            value = p.raw(prop)
        out[s.attr] = value
    return out


def _uint(p: Props, prop: str, bits: int, limits: Any) -> int | None:
    if limits is None:
        return p.uint(prop, bits)
    if not limits.pow2:
        return p.uint(prop, bits, limits.low, limits.high)
    value = p.uint(prop, bits)
    if value is not None and not limits.allows(value):
        raise p.error(
            f"The value of '{prop}' in {p.what} should be a power of 2 between"
            f" {limits.low} and {limits.high}, got {value}",
            prop,
        )
    return value


def _fds(p: Props, prop: str) -> tuple[int, ...]:
    text = p.raw(prop)
    if text is None:
        return ()
    try:
        return tuple(read_int(x) for x in text.split(":"))
    except ValueError as exc:
        raise p.error(f"invalid value for '{prop}' in {p.what}: {exc}", prop) from None

"""Helpers both emitters share: path kinds, the ``key=value`` writer and "cannot express" errors."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from launcher.compile.stratovirt.props import write_bool, write_size
from launcher.errors import InvalidInput, Issue


class PathKind(StrEnum):
    INPUT = "input"  # read by StratoVirt: kernel, images, firmware (ozone: -source)
    OUTPUT = "output"  # created by StratoVirt: sockets, logs, pidfile
    KEEP = "keep"  # host device nodes and sysfs paths, passed as they are


PathFn = Callable[[str, PathKind, str], str]  # (host path, kind, manifest key) -> argv text


def plain_path(path: str, kind: PathKind, key: str) -> str:
    return path


def cannot(message: str, path: str, hint: str = "") -> InvalidInput:
    """StratoVirt has no spelling for this model value: one issue at the manifest key."""
    return InvalidInput([Issue(message, path=path, hint=hint, code="cmdline-unexpressible")])


def size_text(size: int, key: str) -> str:
    try:
        return write_size(size)
    except ValueError as exc:
        raise cannot(f"{key}: {exc}", key, 'use a multiple of 1 MiB, e.g. "512M" or "2G"') from None


def props(head: str | None, *pairs: tuple[str, object]) -> str:
    """``head,key=value,...`` skipping None/False values; True means a bare flag."""
    parts = [head] if head else []
    for key, value in pairs:
        if value is None or value is False:
            continue
        if value is True:
            parts.append(key)
            continue
        text = str(value)
        if not text or "," in text:
            raise cannot(
                f"{key}='{text}' cannot be written in a StratoVirt property list "
                "(values are non-empty and cannot contain ',')",
                "",
                f"change the value given for {key}",
            )
        parts.append(f"{key}={text}")
    return ",".join(parts)


def opt_bool(value: bool | None) -> str | None:
    return None if value is None else write_bool(value)

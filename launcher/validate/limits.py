"""Declared limits: each key declared with ``limits=`` and ``rule=`` (``launcher.keys``) is
checked here, at its key, so a range is written once (on the key, or in ``engine.device_rules``
where QMP hot-plug checks the same device) and no rule module restates it."""

from __future__ import annotations

from typing import Any

from launcher import keys as k
from launcher.manifest.sourcemap import Path
from launcher.validate.base import Context

_NESTED = (k.SECTION, k.TABLE, k.LIST)


def check(ctx: Context) -> None:
    _walk(ctx, ctx.manifest, ())


def _walk(ctx: Context, obj: Any, path: Path) -> None:
    for s in k.specs(type(obj)):
        value = getattr(obj, s.attr)
        if value is None:
            continue
        limits = s.decl.limits
        if limits is not None and not limits.allows(value):
            default = s.default_value()
            ctx.add(
                s.decl.rule,
                (*path, s.name),
                f"{s.name} {value} must be {limits.describe()}",
                f"{default} is the default" if default is not None else f"use {limits.describe()}",
            )
        elif s.kind == k.SECTION:
            _walk(ctx, value, (*path, s.name))
        elif s.kind == k.TABLE:
            for item in value:
                _walk(ctx, item, (*path, s.name, item.id))
        elif s.kind == k.LIST:
            for i, item in enumerate(value):
                _walk(ctx, item, (*path, s.name, i))

"""Declared limits: each key declared with ``limits=`` and ``rule=`` (``launcher.keys``) is
checked here, at its key, so a range is written once (on the key, or in ``engine.device_rules``
where QMP hot-plug checks the same device) and no rule module restates it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher import keys as k
from launcher.manifest.sourcemap import Path
from launcher.validate.base import Context

if TYPE_CHECKING:
    from engine.device_rules import IntRange

_NESTED = (k.SECTION, k.TABLE, k.LIST)
#: per class: (keys with their limits, keys holding model values to walk into)
_WALK: dict[type, tuple[tuple[tuple[k.Spec, IntRange], ...], tuple[k.Spec, ...]]] = {}


def check(ctx: Context) -> None:
    _walk(ctx, ctx.manifest, ())


def _walk(ctx: Context, obj: Any, path: Path) -> None:
    cls = type(obj)
    plan = _WALK.get(cls)
    if plan is None:
        specs = k.specs(cls)
        plan = _WALK[cls] = (
            tuple((s, s.decl.limits) for s in specs if s.decl.limits is not None),
            tuple(s for s in specs if s.kind in _NESTED),
        )
    limited, nested = plan
    for s, limits in limited:
        value = getattr(obj, s.attr)
        if value is not None and not limits.allows(value):
            default = s.default_value()
            ctx.add(
                s.decl.rule,
                (*path, s.name),
                f"{s.name} {value} must be {limits.describe()}",
                f"{default} is the default" if default is not None else f"use {limits.describe()}",
            )
    for s in nested:
        value = getattr(obj, s.attr)
        if not value:
            continue
        if s.kind == k.SECTION:
            _walk(ctx, value, (*path, s.name))
        elif s.kind == k.TABLE:
            for item in value:
                _walk(ctx, item, (*path, s.name, item.id))
        else:
            for i, item in enumerate(value):
                _walk(ctx, item, (*path, s.name, i))

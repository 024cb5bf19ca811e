"""Semantic rules: every StratoVirt v2.2.0 rule a manifest can break, checked on the model.

``check_model(manifest)`` returns issues with key paths and no marks (the loader places them),
so ``svlaunch import`` runs the same rules on a model built from an argv. One module per area;
each has ``check(ctx)`` and appends to ``ctx.issues``. Nothing here touches the host: host
probes live in ``launcher.validate.host`` and run only for ``svlaunch check``.
"""

from __future__ import annotations

from launcher import model as m
from launcher.errors import Issue
from launcher.validate import (
    blk_net,
    chardev,
    cpu,
    devices,
    general,
    limits,
    machine,
    memory,
    ozone,
    pci,
    placement,
    snapshot,
)
from launcher.validate.base import RULES, Context

__all__ = ["RULES", "check_model"]

_AREAS = (
    general,
    machine,
    cpu,
    memory,
    limits,
    blk_net,
    chardev,
    pci,
    devices,
    ozone,
    placement,
    snapshot,
)


def check_model(manifest: m.Manifest, target: str = "engine") -> list[Issue]:
    """Every rule violation in ``manifest``; errors first, each in declaration order.

    ``target="stratovirt"`` is for ``svlaunch cmdline``: rules that the builtin engine can
    satisfy on its own (a missing QMP socket) become errors there.
    """
    ctx = Context(manifest, target)
    for area in _AREAS:
        area.check(ctx)
    return sorted(ctx.issues, key=lambda i: not i.is_error)

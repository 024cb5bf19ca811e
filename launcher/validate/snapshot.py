"""A manifest that restores a snapshot (``incoming``): what it may not have, and what it may not
change (docs/snapshot.md).

``check(ctx)`` (pure, every ``validate``): each key declared with ``snapshot=`` (``launcher.keys``;
StratoVirt's limits: balloon, vhost-net, VFIO, hugepages or file-backed memory, shared memory)
that the manifest sets is refused at the key when it restores (``snapshot-unsupported``).

``check_snapshot(manifest)`` (host: ``svlaunch check`` and ``up``): reads the snapshot the
manifest names, checks its files, and compares the plan it recorded with this manifest's
(``engine.snapshot.rules``); each difference is reported at the manifest key that makes it
(``host-snapshot-mismatch``), found through the keys' ``plan=`` declarations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from launcher import keys as k
from launcher import model as m
from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, format_path
from launcher.validate.base import Context

RESTORE_HINT = "remove it, or boot this VM instead of restoring it (drop incoming)"


def _set(value: Any) -> bool:
    return value is not None and value is not False and value != () and value != ""


def _declared(obj: Any, path: Path) -> Iterator[tuple[k.Spec, Any, Path]]:
    """Every declared key under ``obj`` that has a value, with its path (sections, tables and
    lists walked into)."""
    for s in k.specs(type(obj)):
        value = getattr(obj, s.attr)
        if not _set(value):
            continue
        here = (*path, s.name)
        yield s, value, here
        if s.kind == k.SECTION:
            yield from _declared(value, here)
        elif s.kind == k.TABLE:
            for item in value:
                yield from _declared(item, (*here, item.id))
        elif s.kind == k.LIST:
            for i, item in enumerate(value):
                yield from _declared(item, (*here, i))


def check(ctx: Context) -> None:
    man = ctx.manifest
    if not man.incoming:
        return
    for s, value, path in _declared(man, ()):
        reason = s.decl.snapshot
        if not reason:
            continue
        places = [(*path, item.id) for item in value] if s.kind == k.TABLE else [path]
        for where in places:
            ctx.add(
                "snapshot-unsupported",
                where,
                f"{format_path(where)} cannot be part of a VM restored from a snapshot "
                f"(incoming): {reason}",
                RESTORE_HINT,
            )


def restore_issues(man: m.Manifest) -> list[Issue]:
    """``check`` alone, for a manifest ``up --restore`` gave an ``incoming`` (key paths)."""
    ctx = Context(man)
    check(ctx)
    return ctx.issues


# -- the host side: the snapshot's files and the plan it recorded --------------------------------

#: device kind -> (manifest table, the model's item attribute holding the plan id)
_DEVICE_TABLES = {
    "blk": "drives",
    "net": "nets",
    "console": "consoles",
    "rng": "rngs",
    "vsock": "vsock",
    "balloon": "balloon",
}
#: VM-wide plan fields without a key of their own: the section that makes them
_SECTIONS = {
    "MemoryPlan.ranges": ("memory", "size"),
    "Plan.numa": ("numa",),
    "VcpuPlan.apic_id": ("cpu",),
    "Plan.serial": ("serial",),
    "SerialPlan.port": ("serial",),
    "SerialPlan.irq": ("serial",),
    "Plan.devices": (),
    "Plan.arch": ("arch",),
    "Plan.machine": ("machine", "type"),
}


def _plan_keys(obj: Any, path: Path) -> dict[str, Path]:
    """plan field -> the key path that feeds it, for ``obj``'s own keys and its sections'."""
    out: dict[str, Path] = {}
    for s in k.specs(type(obj)):
        here = (*path, s.name)
        if s.decl.plan:
            out.setdefault(s.decl.plan, here)
        if s.kind == k.SECTION and s.optional is False:
            for field, p in _plan_keys(getattr(obj, s.attr), here).items():
                out.setdefault(field, p)
    return out


def _device_paths(man: m.Manifest, plan: Any) -> dict[str, tuple[Path, Any]]:
    """plan device id -> (the manifest path of the item that made it, that item)."""
    items: list[tuple[Path, Any]] = [(("drives", d.id), d) for d in man.drives]
    items += [(("nets", n.id), n) for n in man.nets]
    items += [(("consoles", c.id), c) for c in man.consoles]
    items += [(("rngs", r.id), r) for r in man.rngs]
    if man.vsock is not None:
        items.append((("vsock",), man.vsock))
    if man.balloon is not None:
        items.append((("balloon",), man.balloon))
    names: dict[str, tuple[Path, Any]] = {}
    for path, item in items:
        for attr in ("device_name", "device_id", "id"):
            ident = getattr(item, attr, None)
            if isinstance(ident, str) and ident:
                names.setdefault(ident, (path, item))
    return {d.id: names[d.id] for d in plan.devices if d.id in names}


def difference_path(diff: Any, man: m.Manifest, plan: Any) -> Path:
    """The manifest key a ``rules.Difference`` comes from (its section when no key feeds it)."""
    if diff.device is not None:
        found = _device_paths(man, plan).get(diff.device)
        if found is None:
            table = _DEVICE_TABLES.get(diff.field.split(".")[0].removesuffix("Plan").lower())
            return (table,) if table else ()
        path, item = found
        for s in k.specs(type(item)):
            if s.decl.plan == diff.field:
                return (*path, s.name)
        return path
    if diff.field in _SECTIONS:
        return _SECTIONS[diff.field]
    return _plan_keys(man, ()).get(diff.field, ())


def check_snapshot(man: m.Manifest) -> list[Issue]:
    """The snapshot ``man.incoming`` names: readable, whole, and taken of a VM like this one."""
    from engine.snapshot import format as fmt
    from engine.snapshot.rules import plan_differences
    from launcher.compile.engine_plan import compile_plan
    from launcher.errors import InvalidInput

    if not man.incoming:
        return []
    try:
        folder = fmt.snapshot_folder(man.incoming)
    except ValueError:
        return []  # unix:/tcp: are live migration: engine-unsupported, reported by compile
    issues: list[Issue] = []

    def add(code: str, path: Path, message: str, hint: str) -> None:
        issues.append(Issue(message, format_path(path), hint, None, "error", code))

    try:
        state = fmt.read_state(folder)
        recorded = state.payload.get("plan")
        mem = state.payload.get("memory") or {}
        import base64

        ident = base64.b64decode(mem.get("id", ""))
        fmt.open_memory(folder, ident, int(mem.get("size", -1))).close()
    except fmt.SnapshotError as e:
        add("host-snapshot", ("incoming",), e.message, e.hint)
        return issues
    except (ValueError, TypeError) as e:
        add("host-snapshot", ("incoming",), f"snapshot {folder}: unreadable state ({e})", "")
        return issues
    try:
        plan = compile_plan(man)
    except InvalidInput:
        return issues  # what the engine cannot run is reported by up/check's compile
    if not isinstance(recorded, dict):
        add("host-snapshot", ("incoming",), f"snapshot {folder}: its state records no plan", "")
        return issues
    try:
        diffs = plan_differences(recorded, plan.to_json())
    except (KeyError, TypeError) as e:
        add("host-snapshot", ("incoming",), f"snapshot {folder}: its plan is incomplete ({e})", "")
        return issues
    for d in diffs:
        add(
            "host-snapshot-mismatch",
            difference_path(d, man, plan),
            f"{d} (restoring {folder})",
            "a restore keeps the snapshot's memory, vCPUs and devices; change this back, or "
            "boot the VM (drop incoming)",
        )
    return issues

"""ozone sandbox rules (docs/stratovirt.md, "ozone"): ids, the sandbox name, capability names,
cgroup keys and values. The rules themselves are the sandbox's own (``engine.ozone.rules``): what
passes here is what the sandbox accepts. Rules that read the host (file access for the VM's uid,
sockets in shared folders, the jail) are ``svlaunch check``'s (``launcher/validate/host.py``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engine.ozone import rules
from launcher.errors import Issue
from launcher.validate.base import Context

if TYPE_CHECKING:
    from launcher import model as m
    from launcher.manifest.sourcemap import Path


def _close(word: str, options: list[str] | tuple[str, ...]) -> list[str]:
    import difflib  # only when a name is wrong

    return difflib.get_close_matches(word, list(options), n=1)


def check(ctx: Context) -> None:
    oz = ctx.manifest.ozone
    if oz is None:
        return
    for key, val in (("uid", oz.uid), ("gid", oz.gid)):
        problem = rules.id_problem(key, val)
        if problem:
            ctx.add(
                "ozone-id-range", ("ozone", key), problem, f"use a {key} of at most {rules.MAX_ID}"
            )
    name = oz.name or ctx.manifest.name
    npath = ("ozone", "name") if oz.name else ("name",)
    problem = rules.name_problem(name)
    if problem:
        ctx.add("ozone-name", npath, f"{problem} (under {oz.root})", rules.NAME_HINT)
    for i, cap in enumerate(oz.capabilities or ()):
        _, errors = rules.parse_caps((cap,))
        if errors:
            close = _close(cap.upper(), list(rules.CAPS))
            ctx.add(
                "ozone-capability",
                ("ozone", "capabilities", i),
                errors[0],
                f"did you mean {close[0]!r}?"
                if close
                else "use a full name with the CAP_ prefix, e.g. CAP_NET_ADMIN",
            )
    keys = dict(oz.cgroup)
    for key, value in oz.cgroup:
        p = ("ozone", "cgroup", key)
        if key not in rules.OZONE_KEYS:
            close = _close(key, rules.OZONE_KEYS)
            hint = "supported: " + ", ".join(rules.OZONE_KEYS)
            ctx.add(
                "ozone-cgroup-key",
                p,
                f"ozone does not support cgroup key {key!r}",
                f"did you mean {close[0]!r}?" if close else hint,
            )
            continue
        if "=" in value or " " in value or not value:
            ctx.add(
                "ozone-cgroup",
                p,
                f"cgroup value {value!r} must be non-empty, without '=' or spaces",
                'e.g. "0-3" or "1073741824"',
            )
            continue
        _, errors = rules.parse_limits(((key, value),), None)
        for e in errors:
            ctx.add("ozone-cgroup", p, e, 'e.g. "0-3" or "1073741824"')
    if oz.numa is not None:
        _, errors = rules.parse_limits((), oz.numa)
        for e in errors:
            ctx.add("ozone-cgroup", ("ozone", "numa"), e, 'a host node list, e.g. "0" or "0-1"')
    if "cpuset.cpus" in keys and not oz.numa:
        ctx.warn(
            "ozone-numa",
            ("ozone", "cgroup", "cpuset.cpus"),
            "cpuset.cpus without ozone.numa leaves cpuset.mems empty",
            'add ozone.numa = "0"',
        )


# -- svlaunch check / up: the sandbox's host checks, at the manifest's keys --------------------


def _keys(man: m.Manifest) -> dict[str, str]:
    """Host path (or ``chardev:<id>``) -> the manifest key that names it."""
    from launcher.manifest.sourcemap import format_path

    named: list[tuple[str | None, Path]] = [
        (man.boot.kernel, ("boot", "kernel")),
        (man.boot.initrd, ("boot", "initrd")),
        (man.memory.path, ("memory", "path")),
        (man.trace, ("trace",)),
        (man.pidfile, ("pidfile",)),
        (man.log.file if man.log else None, ("log", "file")),
    ]
    named += [(d.file, ("drives", d.id, "file")) for d in man.drives]
    named += [(r.file, ("rngs", r.id, "file")) for r in man.rngs]
    named += [(q, ("qmp",)) for q in man.qmp]
    for c in man.chardevs:
        named += [(c.path, ("chardevs", c.id, "path")), (f"chardev:{c.id}", ("chardevs", c.id))]
    if man.serial is not None:
        named += [(man.serial.path, ("serial", "path")), (f"chardev:{man.serial.id}", ("serial",))]
    if man.ozone is not None:
        named += [(src, ("ozone", "sources", i)) for i, src in enumerate(man.ozone.sources)]
        named.append((man.ozone.netns, ("ozone", "netns")))
    out: dict[str, str] = {}
    for path, key in named:
        if path:
            out.setdefault(path if path.startswith("chardev:") else os.path.abspath(path),
                           format_path(key))  # fmt: skip
    return out


def host_issues(man: m.Manifest, is_root: bool) -> list[Issue]:
    """What the sandbox will refuse on this host when it starts the VM, said now, located."""
    from engine.errors import InvalidInput, SvlaunchError
    from engine.ozone.errors import SandboxError
    from engine.ozone.runtime import discover
    from engine.ozone.spec import build_spec
    from engine.ozone.state import DEFAULT_STATE_DIR
    from launcher.compile.engine_plan import compile_plan

    def issue(message: str, path: str, hint: str = "") -> Issue:
        return Issue(message, path, hint, None, "error", "host-sandbox")

    try:
        plan = compile_plan(man)
    except SvlaunchError:
        return []  # what the engine cannot run at all is validation's to say
    if plan.sandbox is None:
        return []  # no ozone section: no sandbox to refuse anything
    keys = _keys(man)
    cache = DEFAULT_STATE_DIR if is_root and os.path.isdir(DEFAULT_STATE_DIR) else None
    out = []
    spec = None
    try:
        spec = build_spec(
            plan, discover(cache), locate=lambda p: keys.get(p) or keys.get(os.path.abspath(p))
        )
    except InvalidInput as exc:
        out += [issue(i.message, i.path, i.hint) for i in exc.issues]
    if not is_root:
        out.append(issue("the sandbox (ozone section) is set up as root", "ozone",
                         "run svlaunch as root, or remove the ozone section"))  # fmt: skip
    sb = plan.sandbox
    exec_name = rules.exec_name(sb.exec_file)
    if _stale_sandbox(sb.name, exec_name, DEFAULT_STATE_DIR):
        return out  # the supervisor cleans a crashed sandbox of this name before it starts
    jail = rules.jail_of(sb.root, sb.exec_file, sb.name)
    if os.path.lexists(jail):
        out.append(issue(
            f"the jail {jail} already exists: a VM of this sandbox name runs, or the folder "
            "was not made by svlaunch", "ozone.name" if man.ozone and man.ozone.name else "name",
            f"stop that VM, or remove {jail} if nothing uses it"))  # fmt: skip
    if spec is not None:
        from engine.ozone.cgroup import CgroupSet

        try:
            CgroupSet(spec.limits, exec_name, sb.name).probe()
        except SandboxError as exc:
            out.append(issue(exc.message, "ozone.cgroup", exc.hint))
    return out


def _stale_sandbox(name: str, exec_name: str, state_dir: str) -> bool:
    """A sandbox of this name crashed: its state file names a dead supervisor and engine."""
    from engine.ozone.state import State, alive

    try:
        old = State.load(State.path_for(state_dir, exec_name, name))
    except (OSError, ValueError, TypeError):
        return False
    return not (
        alive(old.supervisor_pid, old.supervisor_start) or alive(old.engine_pid, old.engine_start)
    )

"""cgroups v1 and v2 for one sandbox: parse limits (pure), probe the host, create, attach, remove.

The ozone keys keep their meaning on both versions: ``cpuset.cpus`` is ``cpuset.cpus`` and
``memory.limit_in_bytes`` becomes ``memory.max`` on v2; ``cpuset.mems`` comes from the manifest's
``numa`` (ozone ``-numa``) or, failing that, from the plan's NUMA host bindings. Each controller is
looked up on its own (a host can mix: here cpuset and memory are v1 and cgroup2 sits at
``/sys/fs/cgroup/unified`` with no controllers). A limit the host cannot apply is refused in
``probe()``, before anything is created. Host paths are injectable: ``root`` prefixes every mount
point read from ``proc_mounts``, so the tests build a fake tree in a temp dir.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from engine.ozone.errors import SandboxError
from engine.ozone.rules import (  # noqa: F401  (re-exported: the parsing is a shared rule)
    OZONE_KEYS,
    Limits,
    parse_cpulist,
    parse_limits,
    parse_size,
)


@dataclass(frozen=True)
class Controller:
    name: str
    version: int  # 1 or 2
    mount: str  # host path of the hierarchy's root


def detect(root: str = "/", proc_mounts: str = "/proc/mounts") -> dict[str, Controller]:
    """Controller name → where it is mounted. v1 wins: a controller bound to v1 is absent on v2."""
    out: dict[str, Controller] = {}
    v2: list[str] = []
    with open(proc_mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 4:
                continue
            mnt = os.path.join(root, fields[1].lstrip("/"))
            if fields[2] == "cgroup":
                for opt in fields[3].split(","):
                    if opt in ("cpuset", "memory", "cpu", "cpuacct", "pids", "blkio", "devices"):
                        out.setdefault(opt, Controller(opt, 1, mnt))
            elif fields[2] == "cgroup2":
                v2.append(mnt)
    for mnt in v2:
        try:
            with open(os.path.join(mnt, "cgroup.controllers")) as f:
                names = f.read().split()
        except OSError:
            continue
        for name in names:
            out.setdefault(name, Controller(name, 2, mnt))
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _write(path: str, value: str, step: str, hint: str = "") -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, str(e.errno))
        raise SandboxError(
            step, f"the host refused {os.path.basename(path)}={value!r} ({code}: {e.strerror})",
            path=path, hint=hint or "check the value against the parent cgroup's limits",
        ) from None  # fmt: skip


@dataclass
class CgroupSet:
    """The cgroups of one sandbox: ``<mount>/<parent>/<group>/<name>`` per controller."""

    limits: Limits
    group: str  # the exec name (ozone: basename of -exec-file)
    name: str
    parent: str = ""  # below the hierarchy root; "" like ozone
    root: str = "/"
    proc_mounts: str = "/proc/mounts"
    created: list[str] = field(default_factory=list)  # dirs we made, in creation order

    def _controllers(self) -> list[Controller]:
        found = detect(self.root, self.proc_mounts)
        out = []
        for name in self.limits.controllers:
            if name not in found:
                raise SandboxError(
                    "cgroups", f"cgroup controller {name!r} is not mounted (v1 or v2)",
                    path=self.proc_mounts,
                    hint=f"mount it (v1: mount -t cgroup -o {name} cgroup /sys/fs/cgroup/{name}) "
                    f"or remove the {name} settings from the manifest's ozone section",
                )  # fmt: skip
            out.append(found[name])
        return out

    def _base(self, c: Controller) -> str:
        return os.path.join(c.mount, self.parent.strip("/")) if self.parent else c.mount

    def dirs(self) -> list[str]:
        """The leaf cgroup dirs, one per distinct hierarchy."""
        return sorted(
            {os.path.join(self._base(c), self.group, self.name) for c in self._controllers()}
        )

    def probe(self) -> None:
        """Refuse what the host cannot apply, before creating anything."""
        for c in self._controllers():
            base = self._base(c)
            if not os.path.isdir(base):
                raise SandboxError("cgroups", "parent cgroup does not exist", path=base)
            leaf = os.path.join(base, self.group, self.name)
            if os.path.exists(leaf):
                raise SandboxError(
                    "cgroups", "the VM's cgroup already exists", path=leaf,
                    hint=f"a VM named {self.name!r} is running or was not cleaned up: "
                    "run the sandbox teardown (svlaunch down / python -m engine.ozone teardown)",
                )  # fmt: skip
            if c.name == "cpuset":
                suffix = ".effective" if c.version == 2 else ""
                for key, want in (("cpus", self.limits.cpus), ("mems", self.limits.mems)):
                    if want is None:
                        continue
                    have_text = _read(os.path.join(base, f"cpuset.{key}{suffix}")) or _read(
                        os.path.join(c.mount, f"cpuset.{key}{suffix}")
                    )
                    have = parse_cpulist(have_text) if have_text else None
                    if have is not None and not parse_cpulist(want) <= have:
                        what = "CPUs" if key == "cpus" else "NUMA nodes"
                        raise SandboxError(
                            "cgroups", f"cpuset.{key}={want} asks for host {what} the host does not "
                            f"offer (available: {have_text})", path=os.path.join(base, f"cpuset.{key}{suffix}"),
                            hint=f"pick {what} within {have_text}",
                        )  # fmt: skip

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into every leaf cgroup."""
        for path in self.dirs():
            _write(os.path.join(path, "cgroup.procs"), str(pid), "cgroups")

    def create(self, pid: int | None = None) -> None:
        """Make the dirs, write the limits, and move ``pid`` in (if given). Records what it made."""
        for c in self._controllers():
            base = self._base(c)
            path = base
            for part in (self.group, self.name):
                parent, path = path, os.path.join(path, part)
                if c.version == 2:
                    ctl = "+cpuset" if c.name == "cpuset" else f"+{c.name}"
                    _write(os.path.join(parent, "cgroup.subtree_control"), ctl, "cgroups")
                if not os.path.isdir(path):
                    try:
                        os.mkdir(path, 0o755)
                    except OSError as e:
                        raise SandboxError(
                            "cgroups", f"cannot create cgroup: {e.strerror}", path=path
                        ) from None
                    self.created.append(path)
                if c.name == "cpuset":
                    # a new cpuset is empty and refuses tasks until both lists are filled
                    for key in ("cpuset.cpus", "cpuset.mems"):
                        if not _read(os.path.join(path, key)):
                            _write(os.path.join(path, key), _read(os.path.join(parent, key + (".effective" if c.version == 2 else ""))) or _read(os.path.join(parent, key)), "cgroups")  # fmt: skip
            self._apply(c, path)
            if pid is not None:
                _write(os.path.join(path, "cgroup.procs"), str(pid), "cgroups")

    def _apply(self, c: Controller, path: str) -> None:
        lim = self.limits
        if c.name == "cpuset":
            if lim.mems is not None:
                _write(os.path.join(path, "cpuset.mems"), lim.mems, "cgroups")
            if lim.cpus is not None:
                _write(os.path.join(path, "cpuset.cpus"), lim.cpus, "cgroups")
        elif c.name == "memory" and lim.memory is not None:
            key = "memory.max" if c.version == 2 else "memory.limit_in_bytes"
            value = ("max" if c.version == 2 else "-1") if lim.memory < 0 else str(lim.memory)
            _write(
                os.path.join(path, key),
                value,
                "cgroups",
                hint="the limit must exceed the memory the engine already uses",
            )

    def remove(self, created: list[str] | None = None) -> list[str]:
        """Remove the dirs we made (deepest first). Returns those still present (shared parents)."""
        left = []
        for path in sorted(created if created is not None else self.created, key=len, reverse=True):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                if path.endswith("/" + self.name):
                    procs = _read(os.path.join(path, "cgroup.procs")).split()
                    raise SandboxError(
                        "teardown", f"cannot remove cgroup: {e.strerror}", path=path,
                        hint=f"processes still inside: {' '.join(procs) or 'none listed'}; stop the VM first",
                    ) from None  # fmt: skip
                left.append(path)  # the shared <group> dir still holds other VMs
        return left

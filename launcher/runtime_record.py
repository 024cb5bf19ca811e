"""What svlaunch keeps about a VM: ``meta.json`` (``Meta``: what ``ps``/``status``/``down``
need without asking the VM) and ``record.json`` (``Record``: what was made for the VM and the
host paths it holds). Their formats are in docs/lifecycle.md; GitOps state builds on them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, fields
from typing import Any

RECORD_VERSION = 1


@dataclass(frozen=True)
class Meta:
    """What ``ps``/``status``/``down`` need without asking the VM."""

    name: str
    pid: int  # the process svlaunch started: the engine, or the sandbox supervisor
    pid_start: int | None
    started: float  # wall clock
    qmp: str
    serial: str | None = None  # unix socket of the serial console, if any
    manifest: str = ""
    pidfile: str | None = None
    detached: bool = False
    vcpus: int = 0
    memory: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    plan: str = ""  # the plan file: the engine's command line names it (identity check)
    engine_pid: int | None = None  # the engine itself (inside a sandbox: the supervisor's child)
    engine_start: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Meta | None:
        if not isinstance(data, dict):
            return None
        known = {f.name for f in fields(cls)}
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
        ints = (meta.pid, meta.pid_start, meta.engine_pid, meta.engine_start)
        if not all(v is None or type(v) is int for v in ints) or not isinstance(meta.qmp, str):
            return None
        return meta

    @property
    def supervisor_pid(self) -> int | None:
        """The unconfined sandbox supervisor, when the engine runs in a sandbox."""
        return self.pid if self.extra.get("sandbox") else None


@dataclass(frozen=True)
class Made:
    """One thing made for a VM. ``path`` is a name in the VM folder or an absolute host path;
    ``ident`` is its (device, inode) in the folder (only svlaunch and its engine write there),
    (device, inode, change time) elsewhere (``engine.ownfiles.file_id``), or None while not yet
    seen (an engine socket, before the engine answered)."""

    path: str
    kind: str  # file | socket | link
    by: str  # svlaunch | engine
    ident: tuple[int, ...] | None = None

    def matches(self, st: os.stat_result) -> bool:
        """The path still names the file recorded."""
        now = (st.st_dev, st.st_ino, st.st_ctime_ns)
        return self.ident is not None and self.ident == now[: len(self.ident)]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "by": self.by,
                "id": list(self.ident) if self.ident else None}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Made:
        ident = d.get("id")
        return cls(str(d["path"]), str(d["kind"]), str(d["by"]),
                   tuple(int(x) for x in ident) if ident else None)  # fmt: skip


@dataclass
class Record:
    """``record.json``: what svlaunch and the engine made for the VM, and the host paths its
    engine creates or writes (``holds``: no second VM may use them while it runs)."""

    name: str
    made: list[Made] = field(default_factory=list)
    holds: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, role)

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "name": self.name, "uid": os.geteuid(),
                "made": [m.to_json() for m in self.made],
                "holds": [{"path": p, "role": r} for p, r in self.holds]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        try:
            if data["version"] != RECORD_VERSION:
                return None
            return cls(
                str(data["name"]),
                [Made.from_json(m) for m in data["made"]],
                [(str(h["path"]), str(h["role"])) for h in data["holds"]],
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def add(self, item: Made) -> None:
        self.made = [m for m in self.made if m.path != item.path] + [item]


def kind_of(st: os.stat_result) -> str:
    """The ``Made.kind`` of a file as lstat sees it."""
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "link" if stat.S_ISLNK(st.st_mode) else "file"

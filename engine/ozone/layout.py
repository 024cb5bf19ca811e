"""The jail's content: host paths mirrored at the same paths inside, and the device nodes.

Every file the VM or the runtime needs appears inside the jail at its host path, so the plan's
paths, ``sys.prefix`` and error messages mean the same thing inside and out. Mirroring a path
reproduces each symlink on the way (``/lib`` → ``usr/lib``, ``.venv/bin/python`` → pyenv's
binary), creates plain 0755 root-owned directories for the rest, and ends in an empty file or
directory that becomes a bind mount target. Targets are always the *resolved* path: mounting
through an absolute symlink inside the jail dir would land on the host before ``pivot_root``.
``plan_ops`` only reads the host; ``apply_ops`` writes the jail dir (in the supervisor, as root).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Bind:
    """A host path bound into the jail. ``target`` is the resolved path (same inside and out)."""

    source: str
    target: str
    is_dir: bool
    writable: bool = False
    role: str = "runtime"
    alias: str = ""  # the path as named (may go through symlinks, mirrored too)


@dataclass(frozen=True)
class Device:
    path: str  # inside the jail, e.g. /dev/kvm
    major: int
    minor: int
    mode: int


@dataclass(frozen=True)
class Op:
    """One thing to create in the jail dir: ``dir``, ``symlink`` (to ``arg``), ``file`` (empty)."""

    kind: str
    path: str
    arg: str = ""


def mirror(path: str, ops: dict[str, Op], depth: int = 0) -> str:
    """Add the ops that make ``path`` resolve inside the jail as on the host; return its real path."""
    if depth > 40:
        raise OSError(40, "too many levels of symbolic links", path)
    cur = "/"
    parts = [p for p in os.path.normpath(path).split("/") if p]
    for i, part in enumerate(parts):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            ops.setdefault(nxt, Op("symlink", nxt, target))
            cur = mirror(os.path.normpath(os.path.join(cur, target)), ops, depth + 1)
            if i < len(parts) - 1:
                ops.setdefault(cur, Op("dir", cur))  # the link's target is a dir on the way
        else:
            if i < len(parts) - 1:
                ops.setdefault(nxt, Op("dir", nxt))
            cur = nxt
    return cur


def plan_ops(binds: list[Bind], extra_dirs: tuple[str, ...] = ()) -> list[Op]:
    """Ops for all bind targets (an empty file or dir at each), in an order that can be applied."""
    ops: dict[str, Op] = {}
    for d in extra_dirs:
        mirror(os.path.join(d, "x"), ops)
        ops.setdefault(d, Op("dir", d))
    for b in binds:
        mirror(b.alias or b.target, ops)
        mirror(b.target, ops)
        ops[b.target] = Op("dir" if b.is_dir else "file", b.target)
    # parents before children; symlinks need their own parent only
    return sorted(ops.values(), key=lambda o: (o.path.count("/"), o.path))


def apply_ops(jail: str, ops: list[Op]) -> None:
    """Create the ops under ``jail`` (root-owned; only the VM's own dirs get the uid)."""
    for op in ops:
        p = jail + op.path
        if os.path.lexists(p):
            continue
        if op.kind == "dir":
            os.mkdir(p, 0o755)
        elif op.kind == "symlink":
            os.symlink(op.arg, p)
        else:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def can_access(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    """Classic permission bits for ``uid``/``gid`` (groups dropped to ``gid`` only; no ACLs).

    ``want`` is a mask of 4 (read), 2 (write), 1 (execute/search). Root passes, as in the kernel
    (the sandbox keeps no CAP_DAC_OVERRIDE, but uid 0 jails are the operator's explicit choice).
    """
    if uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        bits = mode >> 6
    elif st.st_gid == gid:
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


def device_spec(path: str, mode: int, dev_root: str = "/dev") -> Device | None:
    """The jail's node for host device ``path`` (major/minor from the host), None if absent."""
    host = os.path.join(dev_root, path.removeprefix("/dev/"))
    try:
        st = os.stat(host)
    except FileNotFoundError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return Device(path, os.major(st.st_rdev), os.minor(st.st_rdev), mode)

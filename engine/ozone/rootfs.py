"""How the child makes the jail its ``/``: ``pivot_root``, or MS_MOVE + chroot on an initramfs root.

``pivot_root(2)`` refuses (EINVAL) when the current root mount has no parent, which is the case
when the host runs from its initramfs (``rootfs`` is the top of the mount tree and can be neither
pivoted nor unmounted): the rig's L1, and hosts that never ``switch_root``. There the sandbox
does what ``switch_root`` and runc's no-pivot mode do: *move* the jail's mount on top of ``/`` and
``chroot`` into it. The old root then stays in the mount namespace, covered, so first every
other mount of the namespace (``/proc``, ``/sys``, ``/dev``...) is detached: what stays hidden
under the jail is only the initramfs' own files and the mounts on the jail's path. Getting back
out would need ``chroot`` (CAP_SYS_CHROOT) or a mount call (CAP_SYS_ADMIN); the engine keeps
neither unless the manifest asks, and keeping them already warns "lets the engine leave the
sandbox". The choice is made by the supervisor (``choose``), from its own mountinfo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.ozone import sys as osys

PIVOT = "pivot"
MOVE = "move"
MODES = (PIVOT, MOVE)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo (the fields the sandbox needs)."""

    mount_id: int
    parent_id: int
    point: str
    fstype: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 3 < len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        out.append(
            MountEntry(int(fields[0]), int(fields[1]), _unescape(fields[4]), fields[sep + 1])
        )
    return out


def root_has_parent(mounts: list[MountEntry]) -> bool:
    """False when the mount on ``/`` is the namespace's top (its parent is itself): initramfs."""
    roots = [m for m in mounts if m.point == "/"]
    if not roots:
        return True  # a chroot whose / is not a mount point: pivot_root reports it itself
    top = roots[-1]  # the last mount on "/" is the one in effect
    return top.parent_id != top.mount_id and top.fstype != "rootfs"


def choose(mountinfo: str = "/proc/self/mountinfo") -> str:
    """``pivot`` where ``pivot_root`` can work, else ``move`` (see module doc)."""
    try:
        with open(mountinfo) as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        return PIVOT
    return PIVOT if root_has_parent(mounts) else MOVE


def _on_path(mnt: str, path: str) -> bool:
    """``mnt`` is ``/``, ``path`` itself, an ancestor of ``path`` or below it."""
    if mnt == "/":
        return True
    mnt, path = mnt.rstrip("/"), path.rstrip("/")
    return mnt == path or path.startswith(mnt + "/") or mnt.startswith(path + "/")


def to_detach(mounts: list[MountEntry], jail: str) -> list[str]:
    """Mount points to detach before the move, deepest first: all but the jail and its path."""
    points = {m.point for m in mounts if not _on_path(m.point, jail)}
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def enter_root(jail: str, mode: str) -> None:
    """Make ``jail`` (already a mount, with its binds below it) this process's ``/``; cwd = ``/``.

    Runs in the child, in its own mount namespace (rslave: nothing here reaches the host).
    Raises ``OSError``; the caller names the step.
    """
    os.chdir(jail)
    if mode == PIVOT:
        # pivot_root(".", "."): the old root ends up stacked on "/" and is detached right away
        osys.pivot_root(".", ".")
        osys.umount2(".", osys.MNT_DETACH)
    else:
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read())
        for mnt in to_detach(mounts, jail):
            try:
                osys.umount2(mnt, osys.MNT_DETACH)
            except OSError:
                pass  # already gone with a parent detached before it
        osys.mount(jail, "/", None, osys.MS_MOVE)
        osys.chroot(".")
    os.chdir("/")

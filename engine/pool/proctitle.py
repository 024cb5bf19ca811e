"""A forked engine's command line: what it runs, as an exec'd one would show it.

A forked process keeps its parent's ``/proc/PID/cmdline`` (the pool's ``serve ...``), so 20 VMs
would look alike to ``ps`` and to an identity check that looks for ``--plan FILE``. The kernel
reads the command line from the process's own memory (``arg_start``..``arg_end``, fields 48-49
of ``/proc/self/stat``); the interpreter copied its arguments at start-up and never reads that
area again, so the engine rewrites it in place (what ``setproctitle`` and PostgreSQL do). The
area cannot grow: a command line that does not fit is not written (the caller gets False).
"""

from __future__ import annotations

import ctypes


def area() -> tuple[int, int]:
    """(address, size) of this process's command-line area."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[48 - 3]), int(fields[49 - 3])
    return start, end - start


def _area_or_none() -> tuple[int, int] | None:
    try:
        return area()
    except (OSError, IndexError, ValueError):
        return None


#: read once, in the pool: every fork has the same address space layout, and a jailed engine
#: has no /proc to read it from
AREA = _area_or_none()


def set_cmdline(argv: list[str]) -> bool:
    """Show ``argv`` as this process's command line; False when it does not fit."""
    data = b"\0".join(a.encode() for a in argv) + b"\0"
    if AREA is None:
        return False
    start, size = AREA
    if not start or len(data) > size:
        return False
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True

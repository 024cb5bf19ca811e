"""Noticing that a VM ended, without polling: one pidfd per running VM's engine, which becomes
readable when the process exits (the agent sleeps on them and on its timer, nothing else).

The agent is also the child subreaper of what it starts (``PR_SET_CHILD_SUBREAPER``): an engine
``svlaunch up -d`` started is re-parented to the agent rather than to init, so the agent reaps
it and learns its exit status even when the engine wrote no exit record (an exec'd engine, a
SIGKILL). An engine it did not start (adopted after a restart of the agent) is watched the same
way; its status then comes from its exit record only.

Restarts back off exponentially: ``base``, twice that, ... up to ``cap``; a VM that ran for
``cap`` since its last start counts as healthy again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False if refused."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap(pid: int) -> dict[str, Any] | None:
    """The exit of ``pid`` if it is a child of this process that has ended (reaped now)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    if os.WIFSIGNALED(status):
        return {"code": None, "signal": os.WTERMSIG(status), "reason": "signal"}
    return {"code": os.WEXITSTATUS(status), "signal": None, "reason": "exit"}


@dataclass
class Watched:
    name: str
    pid: int
    start: int | None
    fd: int


class Supervisor:
    """The pidfds of the VMs being watched, by descriptor."""

    def __init__(self) -> None:
        self.by_fd: dict[int, Watched] = {}

    def names(self) -> set[str]:
        return {w.name for w in self.by_fd.values()}

    def watch(self, running: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """Watch every VM of ``running`` (name -> ``observe.Running``) not yet watched, stop
        watching the others; the VMs whose process is already gone, with how they ended when
        that is known (a child of this process, reaped now)."""
        from launcher.identity import pid_alive

        gone: list[tuple[str, dict[str, Any] | None]] = []
        wanted: dict[str, tuple[int, int | None]] = {}
        for name, r in running.items():
            if r.meta is not None:
                wanted[name] = (r.meta.pid, r.meta.pid_start)
        for fd, w in list(self.by_fd.items()):
            if wanted.get(w.name) != (w.pid, w.start):  # stopped by an apply, or it ended
                self._drop(fd)
                how = reap(w.pid)  # not left a zombie of this process
                if not pid_alive(w.pid, w.start):
                    gone.append((w.name, how))
        have = self.names()
        for name, (pid, start) in wanted.items():
            if name in have:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                gone.append((name, None))
                continue
            if not pid_alive(pid, start):  # ended (a zombie), or the pid is another process
                os.close(fd)
                gone.append((name, reap(pid)))
                continue
            self.by_fd[fd] = Watched(name, pid, start, fd)
        return gone

    def ended(self, fd: int) -> tuple[str, dict[str, Any] | None]:
        """A pidfd became readable: the VM's name and, for a child, how it ended (reaped)."""
        w = self.by_fd[fd]
        self._drop(fd)
        return w.name, reap(w.pid)

    def _drop(self, fd: int) -> None:
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def close(self) -> None:
        for fd in list(self.by_fd):
            self._drop(fd)


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def delay(self, restarts: int) -> float:
        return min(self.cap, self.base * (2 ** min(restarts, 30)))

"""How the jailed engine ended, in words: exit code, signal, and a seccomp kill named as such.

A seccomp kill arrives as SIGSYS. The kernel also logs an audit record (``type=1326 ... pid=N
... syscall=NR``) to the kernel log whenever ``kill_process`` is in
``/proc/sys/kernel/seccomp/actions_logged`` (the default), audit daemon or not; when the
supervisor can read ``/dev/kmsg`` it adds the syscall's name to the reason.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Any

_AUDIT = re.compile(r"type=1326 [^\n]*?\bpid=(\d+)\b[^\n]*?\bsyscall=(\d+)\b")


@dataclass(frozen=True)
class Exit:
    pid: int
    code: int | None  # exit status, or None when killed
    signal: int | None
    reason: str

    @property
    def shell_status(self) -> int:
        """What a shell would report: the code, or 128 + signal."""
        return self.code if self.code is not None else 128 + (self.signal or 0)

    @property
    def seccomp(self) -> bool:
        return self.signal == signal.SIGSYS


def syscall_name(nr: int) -> str:
    try:
        import pyseccomp

        return pyseccomp.resolve_syscall(pyseccomp.system_arch(), nr).decode()
    except Exception:  # libseccomp missing: the number alone still helps
        return f"syscall {nr}"


def seccomp_audit(pid: int, kmsg: str = "/dev/kmsg") -> int | None:
    """The syscall number of the last seccomp audit record for ``pid`` in the kernel log."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found = None
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while we read; go on
                continue
            if not rec:
                break
            for m in _AUDIT.finditer(rec):
                if int(m.group(1)) == pid:
                    found = int(m.group(2))
    finally:
        os.close(fd)
    return found


def describe(pid: int, status: int, kmsg: str = "/dev/kmsg") -> Exit:
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return Exit(
            pid, code, None, "exited normally" if code == 0 else f"exited with status {code}"
        )
    sig = os.WTERMSIG(status)
    if sig == signal.SIGSYS:
        nr = seccomp_audit(pid, kmsg)
        what = (
            f": it called {syscall_name(nr)} ({nr}), which its allow-list does not permit"
            if nr is not None
            else ""
        )
        return Exit(pid, None, sig, f"killed by seccomp (SIGSYS){what}")
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    return Exit(pid, None, sig, f"killed by {name}")


def exit_record(end: Exit, report: dict[str, Any] | None) -> dict[str, Any]:
    """The exit record of a jailed engine (``engine.ending``). The status is the supervisor's
    own (``waitpid``); the cause and the panic flags are the engine's report when it agrees with
    that status, else what the status alone says (a killed engine has no cause)."""
    from engine import ending

    if report is not None and end.signal is None and report.get("code") == end.code:
        return dict(report)
    cause = ending.cause_of_code(end.code) if end.code is not None else None
    known = ending.Ending(cause, end.reason, cause is ending.Cause.GUEST_PANIC) if cause else None
    return ending.record(end.shell_status, known, signal=end.signal, reason=end.reason)

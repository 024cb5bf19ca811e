"""How a VM ended: the cause, the engine's exit code for it, and the exit record (``exit.json``).

One vocabulary serves three readers: the QMP ``SHUTDOWN`` event's ``reason`` (QEMU's
``ShutdownCause`` words, qapi/run-state.json), the engine's exit status, and the exit record a
supervisor (``svlaunch ps``/``status``, a GitOps agent honouring ``restart = "on-failure"``)
reads after the process is gone. QEMU reports a triple fault as ``guest-reset``; here it is
``guest-triple-fault``, so a guest that crashed that way is told apart from one that rebooted.

Exit codes (docs/lifecycle.md): 0 only when the guest powered itself off or the host asked the
VM to stop (QMP ``quit``, SIGTERM/SIGINT); every other end has its own code, so "restart on
failure" is "restart unless 0". 1-3 keep their meaning for every svlaunch process
(``engine.errors``): 1 the host could not run the VM (a bad plan, KVM refused, an error while it
ran), 2 bad flags, 3 an internal error.

Pure values: the launcher reads records with ``parse_record`` (a record is written by a process
the launcher does not trust blindly: a jailed engine), so nothing here does I/O but ``write``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.errors import EXIT_INTERNAL, EXIT_INVALID, EXIT_USAGE

#: the exit record's format; a reader refuses another one (docs/lifecycle.md)
RECORD_VERSION = 1
#: a record is one small JSON object; anything longer is not one
MAX_RECORD_BYTES = 16 << 10


class Cause(StrEnum):
    """Why the VM stopped (QMP ``SHUTDOWN``'s ``reason``)."""

    GUEST_SHUTDOWN = "guest-shutdown"  # ACPI S5 (or a KVM shutdown system event)
    GUEST_RESET = "guest-reset"  # the guest rebooted: a microVM stops instead
    GUEST_TRIPLE_FAULT = "guest-triple-fault"  # svlaunch's word: QEMU says guest-reset
    GUEST_PANIC = "guest-panic"  # pvpanic, with the panic action "poweroff"
    HOST_QMP_QUIT = "host-qmp-quit"
    HOST_QMP_SYSTEM_RESET = "host-qmp-system-reset"  # a microVM stops instead of rebooting
    HOST_SIGNAL = "host-signal"  # SIGTERM or SIGINT (svlaunch down's last resort, Ctrl-C)
    HOST_ERROR = "host-error"  # the host could not run the guest on (KVM error, emulation)

    @property
    def guest(self) -> bool:
        """The guest caused it (``SHUTDOWN``'s ``guest`` member)."""
        return self.value.startswith("guest-")


#: the engine's exit status for each cause (the table in docs/lifecycle.md)
EXIT_CODES: dict[Cause, int] = {
    Cause.GUEST_SHUTDOWN: 0,
    Cause.HOST_QMP_QUIT: 0,
    Cause.HOST_SIGNAL: 0,
    Cause.HOST_ERROR: EXIT_INVALID,
    Cause.GUEST_RESET: 4,
    Cause.HOST_QMP_SYSTEM_RESET: 5,
    Cause.GUEST_TRIPLE_FAULT: 6,
    Cause.GUEST_PANIC: 7,
}
#: what a non-zero code says when no record tells more (a sandbox supervisor, a shell)
CODE_MEANINGS: dict[int, str] = {
    EXIT_INVALID: "the host could not run the VM (see its log)",
    EXIT_USAGE: "bad engine flags",
    EXIT_INTERNAL: "internal error in the engine (a bug: see its log)",
    **{code: f"stopped: {cause}" for cause, code in EXIT_CODES.items() if code > EXIT_INTERNAL},
}


def exit_code(cause: Cause) -> int:
    return EXIT_CODES[cause]


def cause_of_code(code: int) -> Cause | None:
    """The one cause a non-zero exit code stands for (None for 0, 2, 3 and unknown codes)."""
    if code in (0, EXIT_USAGE, EXIT_INTERNAL):
        return None
    return next((c for c, n in EXIT_CODES.items() if n == code), None)


@dataclass(frozen=True, slots=True)
class Ending:
    """What the engine knows about how its VM ended (``Vm.ending``)."""

    cause: Cause
    detail: str  # one line for people: "guest poweroff (ACPI S5)", "triple fault at RIP ..."
    panicked: bool = False  # the guest reported a panic (pvpanic) during this run
    crash_loaded: bool = False  # ... or that it loaded a crash kernel after one
    started: float | None = None  # time.time() when the guest first ran

    @property
    def code(self) -> int:
        return EXIT_CODES[self.cause]


def record(
    code: int | None,
    ending: Ending | None,
    *,
    signal: int | None = None,
    reason: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The exit record (docs/lifecycle.md): ``ending`` when the engine saw the end, else only
    the process's status (a start-up error, a signal) and ``reason``."""
    cause = ending.cause if ending is not None else None
    if cause is None and code == EXIT_INVALID and signal is None:
        cause = Cause.HOST_ERROR  # refused before or while it ran: the host's side
    rec: dict[str, Any] = {
        "version": RECORD_VERSION,
        "code": code,
        "signal": signal,
        "cause": None if cause is None else cause.value,
        "guest": None if cause is None else cause.guest,
        "reason": reason or (ending.detail if ending is not None else _reason(code, signal)),
        "panicked": bool(ending and ending.panicked),
        "crash_loaded": bool(ending and ending.crash_loaded),
        "started": ending.started if ending is not None else None,
        "ended": time.time(),
    }
    rec.update(extra)
    return rec


def _reason(code: int | None, signal: int | None) -> str:
    if signal is not None:
        return f"killed by signal {signal}"
    if code is None:
        return "unknown"
    return "exited normally" if code == 0 else CODE_MEANINGS.get(code, f"exit status {code}")


def encode(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec).encode() + b"\n"


def write(fd: int, rec: dict[str, Any]) -> None:
    """Write the record to a file or pipe the caller opened (``write(2)`` only: the engine's
    main thread may be under seccomp); a failure is reported, never raised."""
    data = encode(rec)
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as e:
        import sys

        print(f"engine: cannot record how the VM ended: {e.strerror}", file=sys.stderr)


_TYPES: dict[str, tuple[type, ...]] = {
    "code": (int, type(None)),
    "signal": (int, type(None)),
    "cause": (str, type(None)),
    "guest": (bool, type(None)),
    "reason": (str,),
    "panicked": (bool,),
    "crash_loaded": (bool,),
    "started": (int, float, type(None)),
    "ended": (int, float),
}


def parse_record(raw: bytes | str | None) -> dict[str, Any] | None:
    """A record read back (from a file, or from a jailed engine's pipe): the known keys with
    their types checked and ``cause`` in the vocabulary; None for anything else."""
    if not raw or len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    out: dict[str, Any] = {"version": RECORD_VERSION}
    for key, types in _TYPES.items():
        value = data.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return None
        out[key] = value
    if out["cause"] is not None and out["cause"] not in Cause._value2member_map_:
        return None
    out["reason"] = out["reason"][:500]
    return out

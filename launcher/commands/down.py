"""stop a running VM

Asks the guest to power off (QMP system_powerdown) and waits; if it does not stop in time, asks
the engine to quit (QMP quit), then sends SIGTERM and finally SIGKILL, each with its own wait.
--force skips the guest: quit, then the signals. QMP goes only to the VM's own engine (the
socket's listener pid and its name are checked) and signals only to the process svlaunch
started for it (pid, start time and command line, through a pidfd).

examples:
  svlaunch down web1
  svlaunch down web1 --timeout 5      # give the guest 5 s to power off
  svlaunch down web1 --force          # do not wait for the guest
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

QUIT_TIMEOUT = 5.0
SIGNAL_TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="VM name (see 'svlaunch ps')")
    parser.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds the guest gets to power off (default %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="skip the guest powerdown")


def _pid_waiter(meta: Any) -> Callable[[float], bool]:
    from launcher.runtime import pid_alive

    def wait(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(meta.pid, meta.pid_start):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    return wait


def _qmp(meta: Any, command: str) -> str:
    """Send one QMP command; "" when accepted, else why not (unreachable, refused)."""
    from launcher.errors import SvlaunchError
    from launcher.identity import connect
    from launcher.qmpclient import QmpCommandError

    try:
        with connect(meta, timeout=3.0) as c:  # the VM's own engine, never whoever answers
            c.execute(command)
        return ""
    except QmpCommandError as exc:
        return f"{command} refused: {exc.desc or exc.error_class}"
    except SvlaunchError as exc:
        return f"{command}: {exc.message}"


def stop_vm(
    meta: Any,
    *,
    force: bool,
    wait: Callable[[float], bool] | None = None,
    guest_timeout: float = 20.0,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> str:
    """Stop the VM described by ``meta``; returns how it stopped (for the message)."""
    wait = wait or _pid_waiter(meta)
    if not force:
        why = _qmp(meta, "system_powerdown")
        if not why and wait(guest_timeout):
            return "powered off"
        why = why or f"guest did not power off within {guest_timeout:g}s"
        say(f"{meta.name}: {why}; quitting")
    why = _qmp(meta, "quit")
    if not why and wait(QUIT_TIMEOUT):
        return "quit"
    if why:
        say(f"{meta.name}: {why}")
    from launcher.errors import HostError
    from launcher.identity import send_signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        say(f"{meta.name}: sending {sig.name} to pid {meta.pid}")
        try:
            if not send_signal(meta, sig):  # only the VM's engine, checked through a pidfd
                return "exited"
        except HostError as exc:
            say(f"{meta.name}: {exc.message}")
            return "exited"
        if wait(SIGNAL_TIMEOUT):
            return f"killed ({sig.name})"
    return "still running"


def run(args: argparse.Namespace) -> int:
    from launcher import runtime
    from launcher.errors import EngineError

    vm = runtime.find(args.name)
    meta = vm.meta()
    if meta is None:
        raise EngineError(f"VM '{args.name}' is starting or its state is unreadable: {vm.path}")
    how = stop_vm(meta, force=args.force, guest_timeout=args.timeout)
    if how == "still running":
        raise EngineError(
            f"VM '{args.name}' (pid {meta.pid}) survived SIGKILL",
            hint="the process may be stuck in the kernel (D state); check 'ps -o stat,wchan'",
        )
    vm.remove()  # what svlaunch and the engine made for it, as recorded (the pidfile too)
    from launcher.report import shown

    print(f"{shown(args.name)}: {how}")
    return 0

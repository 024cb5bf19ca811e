"""``svlaunch up`` in the foreground: once the engine answers QMP, stay with it: the live TUI,
or the serial console relayed to this terminal (raw mode, Ctrl-] detaches), or just wait; Ctrl-C
stops the VM cleanly (a second one forces).

Split from ``up.py``, which loads, claims, starts the engine and waits for its QMP socket: this
module begins where a detached ``up`` returns, and owns the terminal (its modes, restored on
every way out).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from launcher.report import shown


def _resume(meta: Any) -> None:
    from launcher.identity import connect

    with connect(meta) as c:
        # One round trip first: the engine's loop then has seen (and accepted) the serial
        # connection made before it, so the guest's first bytes are not written to nobody.
        c.execute("query-status")
        c.execute("cont")


def _console_terminal(fd: int) -> list[Any] | None:
    """Raw mode for the guest, except that Ctrl-C still signals svlaunch (to stop the VM)."""
    if not os.isatty(fd):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG
    attrs[6][termios.VSUSP] = b"\x00"  # Ctrl-Z and Ctrl-\\ go to the guest, not to us
    attrs[6][termios.VQUIT] = b"\x00"
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return saved


def foreground(
    proc: subprocess.Popen[bytes], vm: Any, meta: Any, *, relay: bool, tui: bool, resume: bool
) -> int:
    """Stay with the started engine until the VM ends (its exit code) or the user detaches
    (0): the TUI, the serial console relayed to this terminal, or just waiting. Ctrl-C stops
    the VM (powerdown, then quit; a second Ctrl-C forces)."""
    import socket

    from launcher.commands.console import relay as relay_console
    from launcher.commands.down import stop_vm

    saved = None
    fd_in = sys.stdin.fileno()
    try:
        if tui:
            from launcher.tui_live import DETACHED, GONE, run_tui

            outcome = run_tui(meta.qmp, serial=meta.serial, title=vm.name, resume=resume, meta=meta)
            if outcome.how == DETACHED and proc.poll() is None:
                print(f"{vm.name}: detached; the VM keeps running (svlaunch down {vm.name})")
                return 0
            if outcome.how == GONE:
                print(f"{vm.name}: the VM is gone: {shown(str(outcome.detail))}", file=sys.stderr)
        elif relay and meta.serial:
            from launcher.identity import check_socket_peer

            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(meta.serial)
            check_socket_peer(sock, meta.serial, meta)
            if resume:
                _resume(meta)
            saved = _console_terminal(fd_in)
            why = relay_console(sock, fd_in, sys.stdout.fileno(), None, leave_on_eof=False)
            sock.close()
            if why == "escape":
                _restore(fd_in, saved)
                saved = None
                print(f"\r\n{vm.name}: detached; the VM keeps running (svlaunch console {vm.name})")
                return 0
        elif resume:
            _resume(meta)
        return proc.wait()
    except KeyboardInterrupt:
        _restore(fd_in, saved)
        saved = None
        print(f"\r\n{vm.name}: stopping (Ctrl-C again to force)", file=sys.stderr)
        try:
            how = stop_vm(meta, force=False, wait=lambda t: _wait_child(proc, t))
        except KeyboardInterrupt:
            how = stop_vm(meta, force=True, wait=lambda t: _wait_child(proc, t))
        print(f"{vm.name}: {how}", file=sys.stderr)
        proc.wait()
        return 0
    finally:
        _restore(fd_in, saved)


def _restore(fd: int, saved: list[Any] | None) -> None:
    if saved is not None:
        import termios

        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False

"""The live terminal UI's I/O half: keys, the QMP session, the serial socket, the refresh loop.

One thread, one ``select``: the terminal (single keys, cbreak mode), the QMP socket (events) and
the serial socket (console tail). Every ``POLL_S`` seconds the view is rebuilt from fresh QMP
replies; events update it as they arrive. Commands that the server lacks (QEMU has no
``x-svlaunch-query-stats``; QEMU 6+ dropped ``query-cpus``) are remembered and not asked again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import sys
import time
from typing import Any

from launcher import tui
from launcher.errors import HostError
from launcher.qmpclient import QmpClient, QmpCommandError

POLL_S = 1.0


class Session:
    """The QMP side of the TUI: polls, actions, events; owns the current ``VmView``."""

    def __init__(self, client: QmpClient, title: str | None = None) -> None:
        self.client = client
        self.missing: set[str] = set()
        name = title or self._ask("query-name", {}).get("name") or client.path
        version = client.greeting.version if client.greeting else None
        self.view = tui.VmView(name, server=tui.server_text(version))
        self.greeting_version = version

    def _ask(self, command: str, default: Any = None) -> Any:
        if command in self.missing:
            return default
        try:
            return self.client.execute(command)
        except QmpCommandError as exc:
            if exc.error_class == "CommandNotFound" or "not found" in exc.desc.lower():
                self.missing.add(command)
            return default

    def poll(self) -> None:
        cpus = self._ask("query-cpus")
        if cpus is None:
            cpus = self._ask("query-cpus-fast")
        self.view = tui.view_from_replies(
            self.view.name,
            status=self._ask("query-status"),
            cpus=cpus,
            memory=self._ask("query-memory-size-summary"),
            balloon=self._ask("query-balloon"),
            stats=self._ask("x-svlaunch-query-stats"),
            greeting_version=self.greeting_version,
            previous=self.view,
        )
        self.absorb_events()

    def absorb_events(self) -> None:
        for ev in self.client.drain_events():
            self.view = tui.apply_event(self.view, ev.name, ev.data, ev.seconds, ev.microseconds)

    def press(self, key: str) -> bool:
        """Run the key's action; False when the key means detach."""
        if key not in tui.KEYS:
            return True
        command, label = tui.KEYS[key]
        if command is None:
            return False
        try:
            self.client.execute(command)
            msg = f"{label}: ok"
        except QmpCommandError as exc:
            msg = f"{label}: {exc.error_class} {exc.desc}".rstrip()
        self.view = tui.with_message(self.view, msg)
        self.poll()
        return True


def _open_serial(path: str | None) -> socket.socket | None:
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def run_tui(
    address: str, *, serial: str | None = None, title: str | None = None, resume: bool = False
) -> int:
    """Show the dashboard until ``q`` or the VM exits. Returns 0.

    ``resume``: send ``cont`` once the serial console is attached (``svlaunch up --tui`` starts
    the engine paused so that no console output is lost).
    """
    from rich.console import Console
    from rich.live import Live

    client = QmpClient.connect(address)
    session = Session(client, title)
    session.poll()
    serial_sock = _open_serial(serial)
    if resume:
        session.press("r")
    pending = ""
    fd_in = sys.stdin.fileno()
    saved = None
    if os.isatty(fd_in):
        import termios
        import tty

        saved = termios.tcgetattr(fd_in)
        tty.setcbreak(fd_in)
    console = Console()
    try:
        with Live(
            tui.render(session.view), console=console, screen=True, auto_refresh=False
        ) as live:
            next_poll = time.monotonic() + POLL_S
            while True:
                watch: list[Any] = [client.sock] + ([fd_in] if fd_in >= 0 else [])
                if serial_sock is not None:
                    watch.append(serial_sock)
                ready, _, _ = select.select(watch, [], [], max(0.0, next_poll - time.monotonic()))
                try:
                    if fd_in in ready:
                        keys = os.read(fd_in, 64).decode(errors="ignore")
                        if not keys:
                            fd_in = -1  # stdin closed: keep watching the VM
                        for key in keys:
                            if not session.press(key):
                                return 0
                    if client.sock in ready:
                        session.absorb_events()
                    if time.monotonic() >= next_poll:
                        session.poll()
                        next_poll = time.monotonic() + POLL_S
                except HostError:
                    session.view = tui.with_message(
                        tui.apply_event(session.view, "SHUTDOWN", {}, int(time.time()), 0),
                        "the VM has exited (QMP closed); press any key",
                    )
                    session.view = dataclasses.replace(session.view, state="exited")
                    live.update(tui.render(session.view), refresh=True)
                    if fd_in >= 0:
                        select.select([fd_in], [], [], 30)
                    return 0
                if serial_sock is not None and serial_sock in ready:
                    try:
                        data = serial_sock.recv(65536)
                    except BlockingIOError:
                        data = b" "
                    if not data:
                        serial_sock.close()
                        serial_sock = None
                    else:
                        session.view, pending = tui.add_serial(session.view, pending, data)
                live.update(tui.render(session.view), refresh=True)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        if serial_sock is not None:
            with contextlib.suppress(OSError):
                serial_sock.close()
        client.close()

"""A small blocking QMP client for the CLI and the TUI, on the sans-I/O protocol's CLIENT role.

It talks to any QMP endpoint (the builtin engine, StratoVirt, QEMU). qemu.qmp is asyncio and a
test-only dependency; the CLI needs one synchronous request at a time plus an event stream, which
this gives in one small class. Connection problems raise ``HostError`` (the user can fix them:
wrong name, VM gone); a refused command raises ``QmpCommandError`` carrying the QMP class.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import time
from collections import deque
from typing import Any

from engine.qmp.protocol import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    QmpConnection,
    QmpProtocolError,
    Reply,
    Role,
)
from launcher.errors import EngineError, HostError


class QmpCommandError(EngineError):
    """The server answered ``{"error": ...}``."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP command '{command}' failed: {error_class}: {desc or '(no reason)'}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


def parse_address(address: str) -> str:
    """``unix:PATH`` or a plain path -> the socket path (TCP is not offered: StratoVirt neither)."""
    if address.startswith("unix:"):
        path = address[5:].split(",", 1)[0]
    elif ":" in address and not os.path.exists(address):
        raise HostError(
            f"QMP address {address!r} is not a unix socket",
            hint="use unix:/path/to/qmp.sock (TCP QMP endpoints are not supported)",
        )
    else:
        path = address
    if not path:
        raise HostError("empty QMP socket path", hint="use unix:/path/to/qmp.sock")
    return path


class QmpClient:
    """One negotiated QMP session. Not thread-safe."""

    def __init__(self, sock: socket.socket, path: str, timeout: float) -> None:
        self.sock = sock
        self.path = path
        self.timeout = timeout
        self.conn = QmpConnection(Role.CLIENT)
        self.events: deque[Event] = deque()
        self.greeting: Greeting | None = None
        self._ids = itertools.count(1)
        self.closed = False

    @classmethod
    def connect(cls, address: str, timeout: float = 5.0) -> QmpClient:
        path = parse_address(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise HostError(
                f"cannot connect to QMP socket {path}: {exc.strerror or exc}",
                hint="is the VM running? ('svlaunch ps' lists VMs)",
            ) from None
        client = cls(sock, path, timeout)
        try:
            client.greeting = client._wait_greeting()
            client.execute("qmp_capabilities")
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    # -- reading --------------------------------------------------------------------------------

    def _fill(self, deadline: float | None) -> bool:
        """Read once; False on timeout. Raises ``HostError`` when the server hangs up."""
        if self.closed:
            raise HostError(f"QMP connection to {self.path} is closed")
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self.sock], [], [], wait)
        if not ready:
            return False
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            data = b""
            if not isinstance(exc, ConnectionResetError):
                raise HostError(f"QMP connection to {self.path} failed: {exc}") from None
        self.conn.receive_data(data)
        return True

    def _next(self, deadline: float | None) -> object | None:
        while True:
            try:
                ev = self.conn.next_event()
            except QmpProtocolError as exc:
                raise HostError(f"QMP server at {self.path} broke the protocol: {exc}") from None
            if ev is not NEED_DATA:
                if isinstance(ev, ConnectionClosed):
                    self.close()
                    raise HostError(f"QMP server at {self.path} closed the connection")
                return ev
            if not self._fill(deadline):
                return None

    def _wait_greeting(self) -> Greeting:
        ev = self._next(time.monotonic() + self.timeout)
        if not isinstance(ev, Greeting):
            raise HostError(f"no QMP greeting from {self.path} within {self.timeout:g}s")
        return ev

    # -- commands and events ----------------------------------------------------------------

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value (events seen meanwhile are queued)."""
        (reply,) = self.pipeline([(name, arguments or {})])
        if isinstance(reply, QmpCommandError):
            raise reply
        return reply

    def pipeline(self, commands: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Send every command at once, then read their replies in order: one write and one
        wake-up instead of a round trip each (``svlaunch diff`` asks 1,000 VMs). A refused
        command's place holds its ``QmpCommandError``; events seen meanwhile are queued."""
        try:
            data = b"".join(
                self.conn.send(Command(name, arguments, f"svl-{next(self._ids)}"))
                for name, arguments in commands
            )
            self.sock.sendall(data)
        except OSError as exc:
            raise HostError(f"QMP connection to {self.path} failed: {exc}") from None
        deadline = time.monotonic() + self.timeout
        out: list[Any] = []
        while len(out) < len(commands):
            ev = self._next(deadline)
            if ev is None:
                raise HostError(
                    f"QMP command '{commands[len(out)][0]}' got no reply within"
                    f" {self.timeout:g}s from {self.path}"
                )
            if isinstance(ev, Event):
                self.events.append(ev)
            elif isinstance(ev, Reply):
                out.append(ev.value)
            elif isinstance(ev, ErrorReply):
                out.append(QmpCommandError(commands[len(out)][0], ev.error_class, ev.desc))
        return out

    def try_execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any | None:
        """``execute`` that returns None when the server refuses (a missing command, say)."""
        try:
            return self.execute(name, arguments)
        except QmpCommandError:
            return None

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.events:
            ev = self._next(deadline)
            if ev is None:
                return None
            if isinstance(ev, Event):
                self.events.append(ev)
        return self.events.popleft()

    def drain_events(self) -> list[Event]:
        """Every event already received or readable now, without blocking."""
        while self._fill(time.monotonic()):
            while True:
                try:
                    ev = self.conn.next_event()
                except QmpProtocolError as exc:
                    raise HostError(
                        f"QMP server at {self.path} broke the protocol: {exc}"
                    ) from None
                if ev is NEED_DATA:
                    break
                if isinstance(ev, ConnectionClosed):
                    self.close()
                    out = list(self.events)
                    self.events.clear()
                    if out:
                        return out
                    raise HostError(f"QMP server at {self.path} closed the connection")
                if isinstance(ev, Event):
                    self.events.append(ev)
        out = list(self.events)
        self.events.clear()
        return out

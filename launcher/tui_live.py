"""The live terminal UI's I/O half: keys, the QMP session, the serial socket, the refresh loop.

One thread, one ``select``: the terminal (single keys, cbreak mode), the QMP socket (events), the
serial socket (console tail) and a signal pipe (terminal resizes). Every ``POLL_S`` seconds the
view is rebuilt from fresh QMP replies; events update it as they arrive. Commands that the
server lacks (QEMU has no ``x-svlaunch-query-stats``; QEMU 6+ dropped ``query-cpus``) are
remembered and not asked again. Redraws happen only when the view or the terminal size changed,
at most every ``MIN_REDRAW_S`` (a chatty console does not repaint the screen per byte).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher import tui
from launcher.errors import HostError
from launcher.qmpclient import QmpClient, QmpCommandError

if TYPE_CHECKING:
    from launcher.runtime_record import Meta

POLL_S = 1.0
MIN_REDRAW_S = 0.05
CONFIRM_S = 3.0

DETACHED, SHUTDOWN, GONE = "detached", "shutdown", "gone"


@dataclass(frozen=True)
class Outcome:
    """How the TUI ended: the user detached, the VM announced its end, or it vanished."""

    how: str  # DETACHED | SHUTDOWN | GONE
    view: tui.VmView
    detail: str = ""


class Session:
    """The QMP side of the TUI: polls, actions, events; owns the current ``VmView``."""

    def __init__(self, client: QmpClient, title: str | None = None) -> None:
        self.client = client
        self.missing: set[str] = set()
        name = title or (self._ask("query-name") or {}).get("name") or client.path
        version = client.greeting.version if client.greeting else None
        self.view = tui.VmView(name, server=tui.server_text(version))
        self.greeting_version = version
        self.armed: tuple[str, float] | None = None  # a key waiting for its confirming press

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
            now=time.monotonic(),
        )
        self.absorb_events()

    def absorb_events(self) -> None:
        for ev in self.client.drain_events():
            self._event(ev)

    def absorb_queued(self) -> None:
        """Events read before the connection broke (a RESET or SHUTDOWN just before the end)."""
        while self.client.events:
            self._event(self.client.events.popleft())

    def _event(self, ev: Any) -> None:
        self.view = tui.apply_event(self.view, ev.name, ev.data, ev.seconds, ev.microseconds)

    def press(self, key: str, now: float | None = None) -> bool:
        """Run the key's action; False when the key means detach."""
        now = time.monotonic() if now is None else now
        armed, self.armed = self.armed, None
        if key not in tui.KEYS:
            self.view = tui.with_message(self.view, f"no action on '{key}'")
            return True
        command, label = tui.KEYS[key]
        if command is None:
            return False
        if key in tui.CONFIRM and not (armed and armed[0] == key and now <= armed[1]):
            self.armed = (key, now + CONFIRM_S)
            self.view = tui.with_message(self.view, f"{label}? press {key} again to confirm")
            return True
        try:
            self.client.execute(command)
            msg = f"{label}: ok"
        except QmpCommandError as exc:
            msg = f"{label}: {exc.error_class} {exc.desc}".rstrip()
        self.view = tui.with_message(self.view, msg)
        self.poll()
        return True


class SerialTail:
    """The serial console socket, read without blocking; one client at a time (as QEMU)."""

    def __init__(self, path: str | None) -> None:
        self.sock: socket.socket | None = None
        self.pending = ""
        self.got_data = False
        self.note = "no serial console socket" if not path else "no console output"
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
            except OSError as exc:
                sock.close()
                self.note = f"serial console not attached: {exc.strerror or exc}"
                return
            sock.setblocking(False)
            self.sock = sock

    def read(self, view: tui.VmView) -> tui.VmView:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return view
        except OSError:
            data = b""
        if not data:
            self.close()
            note = (
                "serial console closed"
                if self.got_data
                else "serial console in use by another client (svlaunch console?)"
            )
            return tui.with_serial_note(view, note)
        self.got_data = True
        view, self.pending = tui.add_serial(view, self.pending, data)
        return view

    def finish(self, view: tui.VmView, timeout: float = 0.5) -> tui.VmView:
        """Read what the server still sends until it hangs up (the engine exiting), then keep
        an unfinished last line too."""
        deadline = time.monotonic() + timeout
        while self.sock is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                break
            view = self.read(view)
        if self.pending:
            view, self.pending = tui.add_serial(view, self.pending, b"\n")
        return view

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class Screen:
    """rich Live on the alternate screen, redrawn only on change and at a bounded rate."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.live: Any = None
        self.shown: tuple[tui.VmView, Any] | None = None
        self.last = 0.0

    def __enter__(self) -> Screen:
        from rich.live import Live

        self.live = Live(console=self.console, screen=True, auto_refresh=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def size(self) -> Any:
        """The terminal's size now. Asked of the terminal itself: rich prefers $COLUMNS and
        $LINES, which a shell or tmux may have exported at start and which go stale on resize."""
        for fd in (1, 2, 0):
            with contextlib.suppress(OSError):
                cols, rows = os.get_terminal_size(fd)
                if cols and rows:
                    self.console.size = (cols, rows)
                    break
        return self.console.size

    def due(self, view: tui.VmView) -> float | None:
        """Seconds until a redraw is allowed, or None when nothing changed."""
        if self.shown == (view, self.size()):
            return None
        return max(0.0, self.last + MIN_REDRAW_S - time.monotonic())

    def show(self, view: tui.VmView, *, now: bool = False) -> None:
        from launcher.tui_render import render

        wait = self.due(view)
        if wait is None or (wait > 0 and not now):
            return
        size = self.size()
        self.live.update(render(view, size.height), refresh=True)
        self.shown, self.last = (view, size), time.monotonic()


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    if fd < 0 or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _resize_pipe() -> Iterator[int]:
    """A file descriptor that becomes readable on SIGWINCH (-1 off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield -1
        return
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_fd = signal.set_wakeup_fd(w)
    old = signal.signal(signal.SIGWINCH, lambda *_: None)
    try:
        yield r
    finally:
        signal.signal(signal.SIGWINCH, old)
        signal.set_wakeup_fd(old_fd)
        os.close(r)
        os.close(w)


def _ended(session: Session, serial: SerialTail, exc: HostError) -> Outcome:
    """The QMP connection broke: a SHUTDOWN before it means the VM ended as asked.

    A command can fail (EPIPE) while the server's last events still wait in the socket, and the
    guest's last console lines in the serial socket: both are read to their end first.
    """
    with contextlib.suppress(HostError):
        session.absorb_events()
    session.absorb_queued()
    session.view = serial.finish(session.view)
    view = session.view
    if tui.saw_shutdown(view):
        return Outcome(SHUTDOWN, dataclasses.replace(view, state="shutdown", message=""))
    gone = dataclasses.replace(view, state="gone", message=f"VM gone: {exc.message}")
    return Outcome(GONE, gone, exc.message)


def _loop(session: Session, serial: SerialTail, screen: Screen, fd_in: int, wake: int) -> Outcome:
    next_poll = time.monotonic() + POLL_S
    while True:
        if session.client.closed:  # the last read drained its final events, then EOF
            return _ended(
                session, serial, HostError(f"QMP server at {session.client.path} hung up")
            )
        screen.show(session.view)
        timeout = max(0.0, next_poll - time.monotonic())
        redraw = screen.due(session.view)
        if redraw is not None:
            timeout = min(timeout, redraw)
        watch: list[Any] = [session.client.sock]
        watch += [fd for fd in (fd_in, wake) if fd >= 0]
        if serial.sock is not None:
            watch.append(serial.sock)
        ready, _, _ = select.select(watch, [], [], timeout)
        if wake >= 0 and wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 512)
        try:
            if fd_in >= 0 and fd_in in ready:
                data = os.read(fd_in, 64)
                if not data:
                    fd_in = -1  # stdin closed: keep watching the VM
                for key in tui.keys_of(data):
                    if not session.press(key):
                        return Outcome(DETACHED, session.view)
            if session.client.sock in ready:
                session.absorb_events()
            if time.monotonic() >= next_poll:
                session.poll()
                next_poll = time.monotonic() + POLL_S
        except HostError as exc:
            return _ended(session, serial, exc)
        if serial.sock is not None and serial.sock in ready:
            session.view = serial.read(session.view)


def require_terminal(what: str) -> None:
    """The dashboard draws on a terminal; piped or redirected, it would show nothing, forever."""
    from launcher.errors import UsageError

    if not (sys.stdout is not None and sys.stdout.isatty()):
        raise UsageError(
            f"{what!r} needs a terminal (its standard output is not one)",
            hint="for scripts use 'svlaunch status NAME', 'svlaunch events NAME --json' or "
            "'svlaunch qmp NAME COMMAND'",
        )


def _stdin_fd() -> int:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):  # closed, or replaced by something without a descriptor
        return -1


def run_tui(
    address: str,
    *,
    serial: str | None = None,
    title: str | None = None,
    resume: bool = False,
    meta: Meta | None = None,
) -> Outcome:
    """Show the dashboard until ``q`` (detach) or the VM ends; say how it ended.

    ``meta``: the VM's runtime record; with it, the QMP and serial sockets are checked to be
    served by that VM's own engine (a path another process took over is refused).
    ``resume``: send ``cont`` once the serial console is attached (``svlaunch up --tui`` starts
    the engine paused so that no console output is lost). When the VM ended, its last screen
    stays printed on the normal screen.
    """
    if meta is not None:
        from launcher.identity import connect

        client = connect(meta)  # the VM's own engine answers, checked on this very connection
    else:
        client = QmpClient.connect(address)
    tail = SerialTail(None)
    try:
        tail = SerialTail(serial)
        if meta is not None and tail.sock is not None and serial:
            from launcher.identity import check_socket_peer

            check_socket_peer(tail.sock, serial, meta)
        session = Session(client, title)
        # The engine accepts the serial connection in its event loop, the same loop that
        # answers QMP: once a QMP reply sent after connect() is back, the accept has happened,
        # so the guest's first bytes after 'cont' have somewhere to go (not dropped).
        session.poll()
        session.view = tui.with_serial_note(session.view, tail.note)
        if resume:
            session.press("r")
        fd_in = _stdin_fd()
        screen = Screen()
        with _cbreak(fd_in), _resize_pipe() as wake, screen:
            outcome = _loop(session, tail, screen, fd_in, wake)
        if outcome.how != DETACHED:
            from launcher.tui_render import render

            screen.console.print(render(outcome.view, keys=False))
        return outcome
    finally:
        tail.close()
        client.close()

"""Character-device backends for the UART and virtconsole: stdio, pty, unix socket, file.

A backend moves bytes between a device model and the host. Output goes through the backend's
``OutputQueue`` (``engine.machine.chardev_out``): ``write`` may be called from any thread (a vCPU
thread writing the THR), only queues (at most ``room()`` bytes) and never blocks; the event loop
the front end attached writes the queue out in chunks, and the queue's policy (docs/console.md)
decides what a slow, stuck or absent reader costs: back-pressure for a slow one, dropped and
counted output for an absent one. Input is read on an ``EventLoop`` and handed to
``sink(bytes) -> taken`` only while ``free()`` says the device has room; when the device is full
the backend stops polling its fd until ``resume_input()``.
"""

from __future__ import annotations

import contextlib
import os
import termios
import threading
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.errors import HostError
from engine.logsetup import get_logger
from engine.machine.chardev_out import NO_SINK, OutputQueue
from engine.plan import ChardevPlan

if TYPE_CHECKING:
    import socket

    from engine.virtio.device import Loop

log = get_logger(__name__)

Sink = Callable[[bytes], int]
Free = Callable[[], int]


class Chardev:
    """Base backend: one output fd and an optional input fd."""

    def __init__(self, plan: ChardevPlan) -> None:
        self.plan = plan
        self.out_fd: int | None = None
        self.in_fd: int | None = None
        self.output = OutputQueue(self._send, name=plan.id, on_gone=self._peer_gone)
        self._loop: Loop | None = None
        self._sink: Sink | None = None
        self._free: Free | None = None
        self._polling = False
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self.plan.backend

    # -- output (any thread; written out on the attached loop) -------------------------------------

    def write(self, data: bytes) -> int:
        """Queue output without blocking; returns the bytes taken (at most ``room()``)."""
        return self.output.write(data)

    def room(self) -> int:
        """Bytes ``write`` takes now (the output queue's free space)."""
        return self.output.room()

    def notify_room(self, callback: Callable[[], None]) -> None:
        """``callback()`` on the attached loop's thread once a full queue has room again (the
        one front end's: the UART raises THRE, virtio-console takes requests again)."""
        self.output.on_room = callback

    @property
    def dropped(self) -> int:
        """Output that never reached a reader: discarded (no reader, a stuck one) or refused."""
        return self.output.dropped + self.output.refused

    def _send(self, data: bytes) -> int:
        """Bytes the output took now (``NO_SINK`` with no output at all); raises
        ``BlockingIOError`` when it would block and ``OSError`` when it went away (loop thread)."""
        fd = self.out_fd
        return NO_SINK if fd is None else os.write(fd, data)

    def _peer_gone(self) -> None:
        """The reader went away; sockets wait for the next client."""

    # -- input (loop thread) ------------------------------------------------------------------------

    def attach(self, loop: Loop, sink: Sink, free: Free) -> None:
        """Input to ``sink`` and output flushed, both on ``loop`` (the front end's loop)."""
        self._loop, self._sink, self._free = loop, sink, free
        self._start_polling()
        self.output.attach(loop)

    def _start_polling(self) -> None:
        if self._loop is not None and self.in_fd is not None and not self._polling:
            try:
                self._loop.add_reader(self.in_fd, self._on_readable)
            except PermissionError:  # EPERM: not pollable (stdin is /dev/null or a file)
                log.debug(
                    "chardev %s: input fd %d cannot be polled: no input", self.plan.id, self.in_fd
                )
                self.in_fd = None
                return
            self._polling = True

    def _stop_polling(self) -> None:
        if self._loop is not None and self.in_fd is not None and self._polling:
            self._loop.remove_reader(self.in_fd)
            self._polling = False

    def resume_input(self) -> None:
        """The device has room again (called on the loop's thread)."""
        self._start_polling()

    def _on_readable(self) -> None:
        assert self._sink is not None and self._free is not None and self.in_fd is not None
        room = self._free()
        if room <= 0:
            self._stop_polling()
            return
        try:
            data = os.read(self.in_fd, room)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_eof()
            return
        self._sink(data)

    def _on_eof(self) -> None:
        self._stop_polling()

    def close(self) -> None:
        """Write out what the guest wrote (docs/console.md), then release the backend."""
        self.output.close()
        self._release()

    def _release(self) -> None:
        self._stop_polling()


class StdioChardev(Chardev):
    """The engine's stdin/stdout; a terminal on stdin is put in raw mode and restored on close."""

    def __init__(self, plan: ChardevPlan) -> None:
        super().__init__(plan)
        self.out_fd = 1
        self._saved: list | None = None
        try:
            os.fstat(0)
            self.in_fd = 0
        except OSError:
            self.in_fd = None
        if self.in_fd is not None and os.isatty(0):
            self._saved = termios.tcgetattr(0)
            tty.setraw(0)
            # keep output post-processing so "\n" still returns the carriage for host logs
            attrs = termios.tcgetattr(0)
            attrs[1] |= termios.OPOST | termios.ONLCR
            termios.tcsetattr(0, termios.TCSANOW, attrs)

    def _release(self) -> None:
        super()._release()
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
            self._saved = None


class PtyChardev(Chardev):
    """A new pseudo-terminal; its slave path is logged as QEMU/StratoVirt do."""

    def __init__(self, plan: ChardevPlan) -> None:
        super().__init__(plan)
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the master never sees a hang-up
        self.out_fd = self.in_fd = master
        log.info("char device redirected to %s (label %s)", self.path, plan.id)

    @property
    def description(self) -> str:
        return f"pty:{self.path}"

    def _release(self) -> None:
        super()._release()
        for fd in (self.out_fd, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.out_fd = self.in_fd = None


_MSG_NOSIGNAL = 0x4000  # socket.MSG_NOSIGNAL (Linux), without importing socket at start-up


class SocketChardev(Chardev):
    """A unix stream socket: a server (one client at a time) or a client."""

    def __init__(self, plan: ChardevPlan) -> None:
        import socket  # lazy: only this backend needs it (start-up time)

        super().__init__(plan)
        if not plan.path:
            raise HostError(f"chardev {plan.id}: a socket backend needs a path")
        self.path = plan.path
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._made: tuple[int, int, int] | None = None  # the socket file this chardev bound
        if plan.server:
            from engine.ownfiles import listen_unix

            lst, self._made = listen_unix(plan.path, f"chardev {plan.id}")
            self._listener = lst
            if not plan.nowait:
                log.info("chardev %s: waiting for a connection on %s", plan.id, plan.path)
                conn, _ = lst.accept()
                self._set_conn(conn)
            lst.setblocking(False)
        else:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                conn.connect(plan.path)
            except OSError as e:
                conn.close()
                raise HostError(
                    f"chardev {plan.id}: cannot connect to {plan.path}: {e.strerror}",
                    hint="start the server side first, or make this chardev the server",
                ) from None
            self._set_conn(conn)

    @property
    def description(self) -> str:
        return f"unix:{self.path}{',server' if self.plan.server else ''}"

    def _set_conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._conn = conn
        self.out_fd = self.in_fd = conn.fileno()

    def attach(self, loop: Loop, sink: Sink, free: Free) -> None:
        super().attach(loop, sink, free)
        if self._listener is not None:
            loop.add_reader(self._listener.fileno(), self._on_accept)
            if self._conn is None:
                # A client that connected before the front end attached is taken now: output
                # written before the loop's next poll would otherwise go to nobody.
                self._on_accept()

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._conn is not None:
            conn.close()  # one client at a time, as QEMU
            return
        self._set_conn(conn)
        self._start_polling()

    def _send(self, data: bytes) -> int:
        conn = self._conn
        return NO_SINK if conn is None else conn.send(data, _MSG_NOSIGNAL)  # no SIGPIPE

    def _peer_gone(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_conn)

    def _on_eof(self) -> None:
        self._drop_conn()

    def _drop_conn(self) -> None:
        self._stop_polling()
        with self._lock:
            conn, self._conn = self._conn, None
            self.out_fd = self.in_fd = None
        if conn is not None:
            conn.close()

    def _release(self) -> None:
        self._drop_conn()
        if self._listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            from engine.ownfiles import unlink_if_same

            unlink_if_same(self.path, self._made)  # only the socket file this chardev bound


class FileChardev(Chardev):
    """Output appended to a file (truncated at start, as QEMU's default); no input."""

    def __init__(self, plan: ChardevPlan) -> None:
        super().__init__(plan)
        if not plan.path:
            raise HostError(f"chardev {plan.id}: a file backend needs a path")
        try:
            self.out_fd = os.open(
                plan.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640
            )
        except OSError as e:
            raise HostError(f"chardev {plan.id}: cannot open {plan.path}: {e.strerror}") from None

    def _release(self) -> None:
        super()._release()
        if self.out_fd is not None:
            os.close(self.out_fd)
            self.out_fd = None


BACKENDS: dict[str, type[Chardev]] = {
    "stdio": StdioChardev,
    "pty": PtyChardev,
    "socket": SocketChardev,
    "file": FileChardev,
}


def open_chardev(plan: ChardevPlan) -> Chardev:
    cls = BACKENDS.get(plan.backend)
    if cls is None:
        raise HostError(
            f"chardev {plan.id}: backend {plan.backend!r} is not supported",
            hint=f"use one of {', '.join(BACKENDS)}",
        )
    return cls(plan)

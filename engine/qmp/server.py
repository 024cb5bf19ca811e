"""The QMP socket server: unix sockets, SCM_RIGHTS and flow control around the pure protocol.

Threading (one choice, kept simple): the server runs on an ``EventLoop``. Give it the engine's
loop, or none and it starts its own loop on a daemon thread named ``qmp``. All client I/O,
every command and every ``VmControl`` call happen on that one thread, so clients are served one
command at a time and the VM sees no concurrent QMP calls. ``emit()`` may be called from any
thread; from the loop's own thread (a handler emitting ``STOP``) it is written at once, so the
event precedes the reply, as in StratoVirt.

Unlike StratoVirt (one client per socket), any number of clients may be connected; each gets
the greeting, its own leaky bucket and every event once negotiated. Writes are blocking with a
timeout (``SEND_TIMEOUT``): a client that stops reading is dropped rather than buffered for.
A client that sends garbage gets a QMP error; one that breaks framing or vanishes is dropped;
the others never notice.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from engine.errors import HostError
from engine.eventloop import EventLoop
from engine.qmp.commands import Dispatcher
from engine.qmp.control import VmControl
from engine.qmp.protocol import (
    NEED_DATA,
    OPERATION_THROTTLED,
    Command,
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    InvalidInput,
    QmpConnection,
    QmpProtocolError,
    RemoteProtocolError,
    Role,
    encode,
)
from engine.qmp.ratelimit import THROTTLED_DESC, LeakyBucket

log = logging.getLogger(__name__)

SEND_TIMEOUT = 2.0
RECV_SIZE = 65536
MAX_FDS_PER_MSG = 16
MAX_QUEUED_FDS = 64
SUN_PATH_MAX = 107


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600; a stale socket file is replaced."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise HostError(
            f"QMP socket path is {len(os.fsencode(path))} bytes, over the unix limit of "
            f"{SUN_PATH_MAX}: {path}",
            hint="use a shorter path (or set SVLAUNCH_RUNTIME_DIR to a short folder)",
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise HostError(
                f"QMP socket path {path} exists and is not a socket",
                hint="remove it or choose another path",
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left behind by a crashed engine
        else:
            raise HostError(
                f"QMP socket {path} is in use by another running process",
                hint="stop that VM first ('svlaunch down NAME') or choose another path",
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on QMP socket {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class _Client:
    def __init__(self, sock: socket.socket, strict: bool) -> None:
        self.sock = sock
        self.conn = QmpConnection(Role.SERVER, strict=strict)
        self.bucket = LeakyBucket()
        self.fds: deque[int] = deque()
        self.alive = True

    def take_fd(self) -> int | None:
        return self.fds.popleft() if self.fds else None

    def close(self) -> None:
        self.alive = False
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.popleft())
        with contextlib.suppress(OSError):
            self.sock.close()


class QmpServer:
    """Serves ``control`` on each unix socket in ``paths``; ``emit`` is the VM's event sink."""

    def __init__(
        self,
        control: VmControl,
        paths: Sequence[str],
        *,
        loop: EventLoop | None = None,
        strict: bool = False,
        greeting: Greeting | None = None,
    ) -> None:
        self.paths = list(paths)
        self.strict = strict
        self.greeting = greeting or Greeting()
        self.dispatcher = Dispatcher(control, self._emit_now)
        self._own_loop = loop is None
        self.loop = loop or EventLoop("qmp")
        self._thread: threading.Thread | None = None
        self._listeners: dict[int, socket.socket] = {}
        self._clients: dict[int, _Client] = {}
        self._made: dict[str, tuple[int, int, int]] = {}  # socket path -> the file it bound
        self.closed = False

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every socket now (errors surface here), then serve."""
        from engine.ownfiles import file_id

        for path in self.paths:
            sock = bind_unix(path)
            self._made[path] = file_id(os.lstat(path))  # close() removes this socket file only
            self._listeners[sock.fileno()] = sock
            self.loop.call_soon_threadsafe(lambda s=sock: self._listen(s))
        if self._own_loop:
            self._thread = threading.Thread(target=self.loop.run, name="qmp", daemon=True)
            self._thread.start()

    def _listen(self, sock: socket.socket) -> None:
        self.loop.add_reader(sock.fileno(), lambda: self._accept(sock))

    def close(self) -> None:
        """Stop serving: drop clients, unlink the sockets (as StratoVirt does at exit)."""
        if self.closed:
            return
        self.closed = True
        done = threading.Event()

        def shutdown() -> None:
            for fd, sock in list(self._listeners.items()):
                self.loop.remove_reader(fd)
                sock.close()
            for client in list(self._clients.values()):
                self._drop(client)
            done.set()

        if self._loop_thread_is_current() or not self.loop._running:
            shutdown()
        else:
            self.loop.call_soon_threadsafe(shutdown)
            done.wait(2.0)
        from engine.ownfiles import unlink_if_same

        for path, made in self._made.items():
            unlink_if_same(path, made)  # never a path it did not bind, or one taken over since
        if self._own_loop and self._thread is not None:
            self.loop.stop()
            self._thread.join(2.0)
            self.loop.close()

    def _loop_thread_is_current(self) -> bool:
        return self.loop.thread_id == threading.get_ident()

    # -- events ---------------------------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send event ``name`` to every negotiated client. Safe from any thread."""
        event = Event.now(name, data)
        if self._loop_thread_is_current():
            self._broadcast(event)
        else:
            self.loop.call_soon_threadsafe(lambda: self._broadcast(event))

    def _emit_now(self, name: str, data: dict[str, Any]) -> None:
        self._broadcast(Event.now(name, data))

    def _broadcast(self, event: Event) -> None:
        for client in list(self._clients.values()):
            if client.alive and client.conn.accepts_events:
                self._write(client, client.conn.send(event))

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # -- clients --------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                log.error("QMP: cannot accept a client: %s", exc)
                return
            raise
        sock.settimeout(SEND_TIMEOUT)
        client = _Client(sock, self.strict)
        self._clients[sock.fileno()] = client
        self.loop.add_reader(sock.fileno(), lambda: self._readable(client))
        self._write(client, client.conn.send(self.greeting))

    def _drop(self, client: _Client) -> None:
        if not client.alive:
            return
        self.loop.remove_reader(client.sock.fileno())
        self._clients.pop(client.sock.fileno(), None)
        client.close()

    def _write(self, client: _Client, data: bytes) -> bool:
        if not client.alive:
            return False
        try:
            client.sock.sendall(data)
        except OSError as exc:  # EPIPE, reset, timeout: the client is gone or stuck
            log.info("QMP: dropping a client that cannot be written to: %s", exc)
            client.conn.send_failed()
            self._drop(client)
            return False
        return True

    def _readable(self, client: _Client) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(
                client.sock, RECV_SIZE, MAX_FDS_PER_MSG, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:
            if len(client.fds) < MAX_QUEUED_FDS:
                client.fds.append(fd)
            else:
                os.close(fd)
        try:
            client.conn.receive_data(data)
            self._process(client)
        except RemoteProtocolError as exc:
            # Framing is lost: say why, then hang up on this client only.
            self._write(client, encode(ErrorReply(exc.error_class, str(exc)).to_wire()))
            self._drop(client)
        except QmpProtocolError:
            log.exception("QMP: protocol misuse on our side")
            self._drop(client)

    def _process(self, client: _Client) -> None:
        while client.alive:
            ev = client.conn.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, ConnectionClosed):
                self._drop(client)
                return
            if isinstance(ev, InvalidInput):
                self._write(client, client.conn.send(ev.reply()))
            elif isinstance(ev, Command):
                if not client.bucket.allow():
                    reply = ErrorReply(OPERATION_THROTTLED, THROTTLED_DESC, ev.id)
                    self._write(client, client.conn.send(reply))
                    continue
                outcome = self.dispatcher.execute(ev, client.take_fd)
                self._write(client, client.conn.send(outcome.reply))
                if outcome.after is not None:
                    outcome.after()

"""The QMP socket server: unix sockets, SCM_RIGHTS and flow control around the pure protocol.

Threading (one choice, kept simple): the server runs on an ``EventLoop``. Give it the engine's
loop, or none and it starts its own loop on a daemon thread named ``qmp``. All client I/O,
every command and every ``VmControl`` call happen on that one thread, so clients are served one
command at a time and the VM sees no concurrent QMP calls. ``emit()`` may be called from any
thread; from the loop's own thread (a handler emitting ``STOP``) it is queued at once, so the
event precedes the reply, as in StratoVirt.

The loop also serves the VM's devices, so nothing a client does may block it (docs/qmp.md):

* Output is never written with a blocking call. Each client has its own output buffer, flushed
  when the socket is writable; while more than ``READ_PAUSE`` bytes wait, the server reads no
  more commands from that client; a client whose buffer passes ``OUTPUT_CAP`` (it stopped
  reading while events pile up) is dropped.
* At most ``MAX_CLIENTS`` clients per VM; the next ones wait in the listen backlog
  (``SOMAXCONN``) and are accepted as others leave. ``accept`` failing for lack of descriptors
  (EMFILE/ENFILE) pauses accepting, for a backoff that doubles up to ``ACCEPT_BACKOFF_MAX`` or
  until a client leaves, instead of spinning on a listener that stays readable.
* Rate limits: StratoVirt's 100 commands/s per connection, and the same per socket for the whole
  VM (``engine/qmp/ratelimit.py``).
* Descriptors a client passes (SCM_RIGHTS, ``getfd``) are its own, capped, and closed with it.

Bad input gets an error reply and the connection goes on (the framer resynchronises).

Sockets: created 0600 (the mode is set on the socket before ``bind``, so it is never wider), a
stale socket nobody listens on is replaced, a live one is refused; at exit the server unlinks
only a socket file that is still the one it bound (same device and inode).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import threading
from collections.abc import Sequence
from typing import Any

from engine.errors import HostError
from engine.eventloop import EventLoop
from engine.qmp.commands import Dispatcher
from engine.qmp.control import ClientFds, VmControl
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
    Role,
)
from engine.qmp.ratelimit import THROTTLED_DESC, Admission, LeakyBucket

log = logging.getLogger(__name__)

RECV_SIZE = 65536
MAX_FDS_PER_MSG = 16
SUN_PATH_MAX = 107
MAX_CLIENTS = 16  # per VM, every socket together
BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
READ_PAUSE = 64 << 10  # stop reading a client's commands while this much output waits
OUTPUT_CAP = 1 << 20  # drop a client whose unread output passes this
PER_TURN = 32  # messages handled per client per loop turn: a flood waits, others go first
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0


class BoundSocket:
    """A listening unix socket and the identity of the file it created."""

    def __init__(self, path: str, sock: socket.socket, dev: int, ino: int) -> None:
        self.path = path
        self.sock = sock
        self.dev = dev
        self.ino = ino

    def unlink_if_ours(self) -> bool:
        """Remove the socket file only if it is still the one this socket created."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != (self.dev, self.ino):
            log.warning("QMP: %s is no longer our socket; leaving it", self.path)
            return False
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            return True
        return False


def _remove_if_stale(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on (left by a crashed engine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HostError(
            f"QMP socket path {path} exists and is not a socket",
            hint="remove it or choose another path",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.setblocking(False)  # a live server with a full backlog answers EAGAIN, never blocks us
    try:
        probe.connect(path)
    except BlockingIOError:
        pass  # someone listens (its backlog is full)
    except ConnectionRefusedError:
        again = os.lstat(path)
        if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)  # nobody listens and it is still the file we probed
        return
    except OSError as exc:
        raise HostError(
            f"QMP socket {path} exists and cannot be probed: {exc.strerror}",
            hint="remove it or choose another path",
        ) from None
    finally:
        probe.close()
    raise HostError(
        f"QMP socket {path} is in use by another running process",
        hint="stop that VM first ('svlaunch down NAME') or choose another path",
    )


def bind_unix(path: str) -> BoundSocket:
    """A listening unix socket at ``path``, mode 0600 from its creation on.

    The socket is bound and listening under a temporary name in the same folder, then linked to
    ``path`` (``link`` never replaces a file): a client that sees the path can connect at once,
    and a file that appeared there meanwhile is never overwritten.
    """
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise HostError(
            f"QMP socket path is {len(os.fsencode(path))} bytes, over the unix limit of "
            f"{SUN_PATH_MAX}: {path}",
            hint="use a shorter path (or set SVLAUNCH_RUNTIME_DIR to a short folder)",
        )
    _remove_if_stale(path)
    tmp = os.path.join(os.path.dirname(path), f".qmp-{os.getpid()}-{secrets.token_hex(4)}")
    sock: socket.socket | None = None
    try:
        try:
            sock = _listen(tmp, link_to=path) if len(os.fsencode(tmp)) <= SUN_PATH_MAX else None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            sock = None  # a file system without hard links: bind in place
        if sock is None:
            sock = _listen(path)
        st = os.lstat(path)
        if stat.S_IMODE(st.st_mode) != 0o600 and stat.S_ISSOCK(st.st_mode):
            os.chmod(path, 0o600)  # a umask that removed owner bits
    except FileExistsError:
        raise HostError(
            f"QMP socket path {path} was taken by another process while the engine started",
            hint="stop that VM first ('svlaunch down NAME') or choose another path",
        ) from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise HostError(f"cannot listen on QMP socket {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return BoundSocket(path, sock, st.st_dev, st.st_ino)


def _listen(where: str, link_to: str | None = None) -> socket.socket:
    """A socket listening at ``where`` (then also at ``link_to``, and no longer at ``where``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), 0o600)  # bind creates the file with this mode (& ~umask)
        sock.bind(where)
        sock.listen(BACKLOG)
        if link_to is not None:
            try:
                os.link(where, link_to)
            finally:
                os.unlink(where)
    except BaseException:
        sock.close()
        raise
    return sock


class _Client:
    def __init__(self, sock: socket.socket, strict: bool, bucket: LeakyBucket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = QmpConnection(Role.SERVER, strict=strict)
        self.bucket = bucket
        self.fds = ClientFds()
        self.out = bytearray()
        self.alive = True
        self.reading = False  # registered as a reader (``_set_reading``)
        self.closing = False  # the peer sent EOF: flush what is queued, then close
        self.output_bound = False  # input waits until the client reads its replies

    def close(self) -> None:
        self.alive = False
        self.fds.close_all()
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
        self.admission = Admission(len(self.paths))
        self._own_loop = loop is None
        self.loop = loop or EventLoop("qmp")
        self._thread: threading.Thread | None = None
        self._bound: list[BoundSocket] = []
        self._clients: dict[int, _Client] = {}
        self._accepting = False
        self._backoff = 0.0
        self._timer: Any = None  # engine.virtio.throttle.LoopTimer, made on the loop's thread
        self._more = -1  # an eventfd: clients with input left over wait for the next loop turn
        self._backlog: dict[int, _Client] = {}
        self.closed = False

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every socket now (errors surface here), then serve."""
        try:
            for path in self.paths:
                self._bound.append(bind_unix(path))
        except BaseException:
            self._release_sockets()
            raise
        self.loop.call_soon_threadsafe(self._start_accepting)
        if self._own_loop:
            self._thread = threading.Thread(target=self.loop.run, name="qmp", daemon=True)
            self._thread.start()

    def _start_accepting(self) -> None:
        from engine.virtio.throttle import LoopTimer

        if self.closed:
            return
        try:
            self._timer = LoopTimer(self.loop, self._backoff_over)  # now, while fds are there
        except OSError as exc:
            log.warning("QMP: no accept back-off timer (%s): a thread will time it", exc)
        self._more = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop.add_reader(self._more, self._next_turn)
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        if self._accepting or self.closed or len(self._clients) >= MAX_CLIENTS:
            return
        self._accepting = True
        for b in self._bound:
            self.loop.add_reader(b.sock.fileno(), lambda b=b: self._accept(b.sock))

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for b in self._bound:
                self.loop.remove_reader(b.sock.fileno())

    def _backoff_over(self) -> None:
        self._resume_accepting()

    def close(self) -> None:
        """Stop serving: flush what can be flushed, drop clients, unlink our sockets."""
        if self.closed:
            return
        self.closed = True
        done = threading.Event()

        def shutdown() -> None:
            self._pause_accepting()
            if self._timer is not None:
                self._timer.close()
            if self._more >= 0:
                self.loop.remove_reader(self._more)
                os.close(self._more)
                self._more = -1
            for client in list(self._clients.values()):
                self._flush(client)  # best effort, never blocking: the quit reply, SHUTDOWN
                self._drop(client)
            done.set()

        if self._loop_thread_is_current() or not self.loop._running:
            shutdown()
        else:
            self.loop.call_soon_threadsafe(shutdown)
            done.wait(2.0)
        self._release_sockets()
        if self._own_loop and self._thread is not None:
            self.loop.stop()
            self._thread.join(2.0)
            self.loop.close()

    def _release_sockets(self) -> None:
        for b in self._bound:
            with contextlib.suppress(OSError):
                b.sock.close()
            b.unlink_if_ours()
        self._bound.clear()

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
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                return  # that one connection failed; the next is unaffected
            # EMFILE/ENFILE (out of descriptors), ENOBUFS/ENOMEM, anything else: accepting
            # again at once would fail again on a listener that stays readable.
            self._pause_accepting()
            first = self._backoff == 0.0
            self._backoff = min(ACCEPT_BACKOFF_MAX, max(ACCEPT_BACKOFF_MIN, self._backoff * 2))
            if first:
                log.error("QMP: cannot accept a client (%s): pausing accepts", exc.strerror)
            if self._timer is not None:
                self._timer.arm(self._backoff)
            else:
                wake = lambda: self.loop.call_soon_threadsafe(self._backoff_over)  # noqa: E731
                threading.Timer(self._backoff, wake).start()
            return
        self._backoff = 0.0
        sock.setblocking(False)
        client = _Client(sock, self.strict, self.admission.client_bucket())
        self._clients[client.fd] = client
        if len(self._clients) >= MAX_CLIENTS:
            self._pause_accepting()
        self._set_reading(client, True)
        self._write(client, client.conn.send(self.greeting))

    def _drop(self, client: _Client) -> None:
        if not client.alive:
            return
        self.loop.remove_reader(client.fd)
        self.loop.remove_writer(client.fd)
        self._clients.pop(client.fd, None)
        self._backlog.pop(client.fd, None)
        client.close()
        self._resume_accepting()  # a slot, and a descriptor, are free again

    def _write(self, client: _Client, data: bytes) -> None:
        """Queue ``data`` for ``client`` and send what the socket takes now, never blocking."""
        if not client.alive:
            return
        client.out += data
        if len(client.out) > OUTPUT_CAP:
            log.warning("QMP: dropping a client that stopped reading (%d bytes queued)", OUTPUT_CAP)
            self._drop(client)
            return
        if len(client.out) == len(data):  # nothing was waiting: try at once
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        if not client.alive:
            return
        while client.out:
            try:
                n = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE, reset: the client is gone
                client.conn.send_failed()
                self._drop(client)
                return
            del client.out[:n]
        if client.out:
            self.loop.add_writer(client.fd, lambda: self._flush(client))
            return
        self.loop.remove_writer(client.fd)
        if client.closing:
            self._drop(client)
        elif client.output_bound:
            client.output_bound = False
            self._process(client)  # commands that arrived while its output was paused

    def _readable(self, client: _Client) -> None:
        if not client.alive:
            return
        try:
            data, fds, flags, _addr = socket.recv_fds(
                client.sock, RECV_SIZE, MAX_FDS_PER_MSG, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds, flags = b"", [], 0
        if fds:
            client.fds.receive(fds)
        if flags & socket.MSG_CTRUNC:
            log.info("QMP: a client sent more than %d fds in one message", MAX_FDS_PER_MSG)
        try:
            client.conn.receive_data(data)
        except QmpProtocolError:
            self._drop(client)
            return
        self._process(client)

    def _later(self, client: _Client) -> None:
        """Continue ``client``'s input on the next loop turn, after every other ready fd."""
        self._backlog[client.fd] = client
        if self._more >= 0:
            os.eventfd_write(self._more, 1)

    def _next_turn(self) -> None:
        try:
            os.eventfd_read(self._more)
        except BlockingIOError:
            return
        backlog, self._backlog = self._backlog, {}
        for client in backlog.values():
            self._process(client)

    def _set_reading(self, client: _Client, on: bool) -> None:
        """Read a client only while its framer needs bytes and its output is drained, so
        neither its input nor its output is ever buffered without bound."""
        if on and not client.reading and client.alive and not client.closing:
            client.reading = True
            self.loop.add_reader(client.fd, lambda: self._readable(client))
        elif not on and client.reading:
            client.reading = False
            self.loop.remove_reader(client.fd)

    def _process(self, client: _Client) -> None:
        self._backlog.pop(client.fd, None)
        budget = PER_TURN
        while client.alive and not client.closing:
            if len(client.out) > READ_PAUSE:  # _flush goes on once the client has read
                client.output_bound = True
                self._set_reading(client, False)
                return
            if budget == 0:  # the rest waits for the next loop turn
                self._set_reading(client, False)
                self._later(client)
                return
            budget -= 1
            try:
                ev = client.conn.next_event()
            except QmpProtocolError:
                self._drop(client)
                return
            if ev is NEED_DATA:
                self._set_reading(client, True)
                return
            if isinstance(ev, ConnectionClosed):
                client.closing = True
                self._set_reading(client, False)
                if not client.out:
                    self._drop(client)
                return
            if isinstance(ev, InvalidInput):
                self._write(client, client.conn.send(ev.reply()))
            elif isinstance(ev, Command):
                if not self.admission.admit(client.bucket):
                    reply = ErrorReply(OPERATION_THROTTLED, THROTTLED_DESC, ev.id)
                    self._write(client, client.conn.send(reply))
                    continue
                outcome = self.dispatcher.execute(ev, client.fds)
                if client.alive:
                    self._write(client, client.conn.send(outcome.reply))
                if outcome.after is not None:
                    outcome.after()

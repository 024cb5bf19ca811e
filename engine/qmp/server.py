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

Sockets come from ``engine.ownfiles.listen_unix``: 0600 from creation, listening before the path
exists, a live one refused, and at exit unlinked only while still the file this server made.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

from engine.eventloop import EventLoop
from engine.ownfiles import FileId, listen_unix, unlink_if_same
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

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn

log = logging.getLogger(__name__)

RECV_SIZE = 65536
MAX_FDS_PER_MSG = 16
MAX_CLIENTS = 16  # per VM, every socket together
READ_PAUSE = 64 << 10  # stop reading a client's commands while this much output waits
OUTPUT_CAP = 1 << 20  # drop a client whose unread output passes this
PER_TURN = 32  # messages handled per client per loop turn: a flood waits, others go first
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0


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
        self._bound: list[tuple[str, socket.socket, FileId]] = []  # path, listener, its file
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
                sock, ident = listen_unix(path, "QMP socket", backlog=BACKLOG)
                sock.setblocking(False)
                self._bound.append((path, sock, ident))
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
        for _path, sock, _ident in self._bound:
            self.loop.add_reader(sock.fileno(), partial(self._accept, sock))

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for _path, sock, _ident in self._bound:
                self.loop.remove_reader(sock.fileno())

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
        for path, sock, ident in self._bound:
            with contextlib.suppress(OSError):
                sock.close()
            unlink_if_same(path, ident)  # never a path it did not bind, or one taken over since
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

"""The pool's server: one thread, one ``poll`` loop, one fork pair per VM.

Single-threaded by design: ``fork`` copies only the calling thread, so a pool with a second
thread could hand a child a lock held forever. Requests are short (read one packet, check it,
fork, reply); a client that connects and sends nothing is dropped after ``CLIENT_TIMEOUT``,
and several can be connected at once, so no client stalls the others.

The pool keeps nothing of a VM once it has replied (no plan, no descriptor, no pid list): a
later fork cannot carry one VM's data into another. It counts requests, that is all.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from engine.pool import child, preload, protocol
from engine.pool.listen import activated_socket, bind_socket, socket_ident
from engine.pool.protocol import RequestError
from engine.pool.spare import Spare, close_quietly, fork_spare, start_time

CLIENT_TIMEOUT = 2.0
TICK = 2.0  # seconds between idle checks (code changed, socket gone, idle exit)
SPARE_DELAY = 0.05  # quiet seconds after a start before the next spare is forked and warmed


@dataclass
class Conn:
    sock: socket.socket
    deadline: float


@dataclass
class Pool:
    listener: socket.socket
    socket_path: str | None  # None under socket activation: systemd owns the path
    lock_fd: int | None
    idle_exit: float  # seconds without a request before the pool exits; 0: never
    started: float = field(default_factory=time.time)
    served: int = 0
    refused: int = 0
    last_request: float = field(default_factory=time.monotonic)
    fingerprint: float = 0.0
    socket_id: tuple[int, int] | None = None
    stopping: bool = False
    conns: dict[int, Conn] = field(default_factory=dict)
    current: socket.socket | None = None  # the connection being answered
    spare: Spare | None = None
    spare_due: float | None = None  # when to fork the next spare (time.monotonic())

    # -- the loop ---------------------------------------------------------------------------------

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            child.ORIGINAL_HANDLERS[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        self.listener.setblocking(False)
        poller = select.poll()  # no descriptor of its own (epoll's would reach the children)
        poller.register(self.listener.fileno(), select.POLLIN)
        self._ensure_spare(warm=True)
        checked = time.monotonic()
        while not self.stopping:
            waits = [TICK, *(c.deadline - time.monotonic() for c in self.conns.values())]
            if self.spare_due is not None:
                waits.append(self.spare_due - time.monotonic())
            timeout = min(waits)
            try:
                events = poller.poll(max(0.0, timeout) * 1000)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self.listener.fileno():
                    self._accept(poller)
                elif fd in self.conns:
                    conn = self.conns.pop(fd)
                    poller.unregister(fd)
                    self._handle(conn)
            now = time.monotonic()
            for fd, conn in list(self.conns.items()):
                if conn.deadline <= now:
                    poller.unregister(fd)
                    del self.conns[fd]
                    conn.sock.close()
            if not events and self.spare_due is not None and now >= self.spare_due:
                self._ensure_spare(warm=True)
            if not events and now - checked >= TICK:
                checked = now
                self._idle_checks()
        self.close()

    def _on_signal(self, _sig: int, _frame: object) -> None:
        self.stopping = True

    def _accept(self, poller: Any) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        conn = Conn(sock, time.monotonic() + CLIENT_TIMEOUT)
        if not self._handle(conn):  # a client sends right after connecting: mostly it is there
            self.conns[sock.fileno()] = conn
            poller.register(sock.fileno(), select.POLLIN)

    def _idle_checks(self) -> None:
        """Exit when idle too long, when our socket file was removed or replaced (nobody can
        reach us), or when the engine's code changed on disk (a new pool would run the new
        code; the next request starts it, or systemd does)."""
        why = ""
        if self.idle_exit and time.monotonic() - self.last_request > self.idle_exit:
            why = f"idle for {self.idle_exit:g} s"
        elif self.socket_path and socket_ident(self.socket_path) != self.socket_id:
            why = f"{self.socket_path} was removed or replaced"
        elif _fingerprint() != self.fingerprint:
            why = "the engine's code changed on disk"
        if why:
            print(f"svlaunch-pool: exiting: {why}", file=sys.stderr, flush=True)
            self.stopping = True

    # -- one request ------------------------------------------------------------------------------

    def _handle(self, conn: Conn) -> bool:
        """Read, answer and close one connection; False (and nothing done) if it has not sent
        its request yet."""
        fds: list[int] = []
        sock = self.current = conn.sock
        try:
            try:
                data, fds, flags = protocol.receive(sock)
            except (BlockingIOError, InterruptedError):
                self.current = None
                return False
            except OSError as e:
                raise RequestError(
                    "bad-request", f"cannot read the request: {e.strerror}"
                ) from None
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))  # fmt: skip
            if uid not in (0, os.geteuid()):
                raise RequestError(
                    "refused",
                    f"uid {uid} (pid {pid}) may not use this pool (only root and uid "
                    f"{os.geteuid()} may)",
                    "run svlaunch as the pool's user, or start a pool of your own",
                )
            if not data:
                raise RequestError("bad-request", "empty request")
            req = protocol.parse(data, flags, len(fds))
            reply, out_fds = self._dispatch(req, fds)
            self.served += 1
        except RequestError as e:
            self.refused += 1
            reply, out_fds = e.reply(), []
        except Exception as e:  # a bug: answer, log, keep serving
            import traceback

            traceback.print_exc()
            self.refused += 1
            reply, out_fds = RequestError("internal", f"pool error: {e!r}").reply(), []
        finally:
            for fd in fds:
                close_quietly(fd)
        try:
            sock.setblocking(True)
            sock.settimeout(CLIENT_TIMEOUT)
            protocol.send(sock, reply, out_fds)
        except OSError:
            pass
        finally:
            for fd in out_fds:
                close_quietly(fd)
            sock.close()
            self.current = None
            self.last_request = time.monotonic()
        if self.spare is None and self.spare_due is None:
            # Not now: the engine just handed over is building its VM, and the next spare's
            # fork and warm-up would take CPU from it. Once the pool has been quiet a moment.
            self.spare_due = time.monotonic() + SPARE_DELAY
        return True

    def _ensure_spare(self, *, warm: bool) -> None:
        self.spare_due = None
        if self.spare is None and not self.stopping:
            try:
                self.spare = self._make_spare(warm=warm)
            except RequestError as e:  # the next request tries again and says so
                print(f"svlaunch-pool: {e.message}", file=sys.stderr, flush=True)

    def _dispatch(self, req: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        op = req["op"]
        if op == "status":
            return self.status(), []
        if op == "stop":
            self.stopping = True
            return {"ok": True, "pid": os.getpid()}, []
        return self._start(req, dict(zip(req.get("fds", []), fds, strict=True)))

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "uid": os.geteuid(),
            "started": self.started,
            "served": self.served,
            "refused": self.refused,
            "engine": preload.ENGINE_DIR,
            "python": sys.version.split()[0],
            "socket": self.socket_path,
            "activated": self.socket_path is None,
            "idle_exit": self.idle_exit,
            "modules": len(preload.PRELOADED),
            "not_preloaded": dict(preload.FAILED),
        }

    def _start(self, req: dict[str, Any], fds: dict[str, int]) -> tuple[dict[str, Any], list[int]]:
        from engine.__main__ import read_plan

        engine = req.get("engine")
        if engine is not None and os.path.realpath(str(engine)) != preload.ENGINE_DIR:
            raise RequestError(
                "wrong-engine",
                f"this pool runs the engine of {preload.ENGINE_DIR}, not {str(engine)[:200]}",
                "each svlaunch installation needs its own runtime folder (SVLAUNCH_RUNTIME_DIR)",
            )
        _check_fds(fds)
        try:
            plan = read_plan(req["plan"])
        except ValueError as e:
            raise RequestError(
                "bad-plan", str(e)[:500], "make the plan with 'svlaunch plan'"
            ) from None
        incoming = req.get("options", {}).get("incoming")
        if incoming is not None and plan.incoming not in (None, incoming):
            raise RequestError(
                "bad-option",
                f"the plan restores {plan.incoming[:200]}, the request asks {incoming[:200]}",
            )
        if incoming is not None and plan.incoming is None and plan.sandbox is not None:
            raise RequestError(
                "bad-option",
                "a sandboxed VM restores only from its plan's incoming (its jail must hold the "
                "snapshot)",
                "svlaunch up --restore DIR puts it in the plan",
            )
        del plan  # checked here for a clear reply; the engine reads its own copy
        return self._hand_to_spare(req["plan"], req.get("options", {}), fds)

    def _hand_to_spare(
        self, plan_path: str, options: dict[str, Any], fds: dict[str, int]
    ) -> tuple[dict[str, Any], list[int]]:
        """Give the request to the spare engine (forked earlier, waiting): no fork on this path."""
        message = {"plan": plan_path, "options": options, "fds": list(fds)}
        for attempt in (1, 2):  # a spare that died while it waited: fork a fresh one, once
            # no spare yet (a burst of requests): fork one now, cold: the request is waiting
            spare = self.spare or self._make_spare(warm=False)
            self.spare = None
            try:
                protocol.send(spare.chan, message, tuple(fds.values()))
                break
            except OSError as e:
                close_quietly(spare.pidfd)
                if attempt == 2:
                    raise RequestError(
                        "fork-failed", f"the spare engine is gone: {e.strerror}"
                    ) from None
            finally:
                spare.chan.close()
        pid = spare.pid
        return {"ok": True, "pid": pid, "pid_start": start_time(pid)}, [spare.pidfd]

    def _make_spare(self, *, warm: bool) -> Spare:
        """Fork the next engine now, off any request's path (``engine/pool/spare.py``)."""
        return fork_spare([self.listener, *(c.sock for c in self.conns.values())], warm=warm)

    def close(self) -> None:
        """Stop serving. VMs are not ours to stop: they keep running."""
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        if self.spare is not None:  # EOF on its channel: the spare exits
            self.spare.chan.close()
            close_quietly(self.spare.pidfd)
            self.spare = None
        if self.socket_path and socket_ident(self.socket_path) == self.socket_id:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        self.listener.close()
        if self.lock_fd is not None:
            close_quietly(self.lock_fd)


def _check_fds(fds: dict[str, int]) -> None:
    """The descriptors are what their names say: a lock file, a log and an exit file to write."""
    for name, fd in fds.items():
        try:
            st = os.fstat(fd)
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError as e:
            raise RequestError("bad-fds", f"descriptor {name!r}: {e.strerror}") from None
        if name in ("lock", "exit") and not stat.S_ISREG(st.st_mode):
            raise RequestError("bad-fds", f"descriptor {name!r} is not a regular file")
        if name == "log" and stat.S_ISDIR(st.st_mode):
            raise RequestError("bad-fds", "descriptor 'log' is a folder")
        if name in ("log", "exit") and mode == os.O_RDONLY:
            raise RequestError("bad-fds", f"descriptor {name!r} is not open for writing")


def _fingerprint() -> float:
    """The newest modification time among the engine's sources."""
    newest = 0.0
    for path in preload.engine_sources():
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            pass
    return newest


def make_pool(socket_path: str | None, lock_fd: int | None, idle_exit: float) -> Pool:
    listener = activated_socket()
    if listener is None:
        if not socket_path:
            raise SystemExit("svlaunch-pool: --socket PATH is required without socket activation")
        listener = bind_socket(socket_path)
    else:
        socket_path = None
    pool = Pool(listener, socket_path, lock_fd, idle_exit)
    pool.fingerprint = _fingerprint()
    pool.socket_id = socket_ident(socket_path) if socket_path else None
    return pool

"""The pool's client side: ask a pool for an engine, or for its status, or to stop.

Used by ``svlaunch up`` and ``svlaunch pool`` (the launcher may import this module; it imports
nothing of the engine's machinery). ``NoPool`` means "start the engine yourself": nobody listens,
the socket is absent, or the pool refused for a reason the exec path does not share
(``wrong-engine``, ``refused``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from engine.pool import protocol

CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0


class NoPool(Exception):
    """No pool can serve this request; ``reason`` says why (for a note, not an error)."""


class PoolRefused(Exception):
    """The pool refused the request: ``code``, ``message``, ``hint`` from its reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.code = str(reply.get("error", "error"))
        self.message = str(reply.get("message", "refused"))
        self.hint = str(reply.get("hint", ""))
        super().__init__(self.message)


@dataclass(frozen=True)
class Started:
    pid: int
    pid_start: int | None
    pidfd: int  # the caller owns it


def connect(path: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise NoPool(f"{path}: {e.strerror or e}") from None
    return sock


def call(
    path: str,
    message: dict[str, Any],
    fds: tuple[int, ...] = (),
    timeout: float = CONNECT_TIMEOUT,
    reply_timeout: float = REPLY_TIMEOUT,
) -> tuple[dict[str, Any], list[int]]:
    """One request, one reply (and the descriptors that came with it). ``NoPool`` only when the
    request never reached a pool; once sent, a missing reply is ``PoolRefused`` (``no-reply``):
    the pool may still act on it, so the caller must not start the engine a second time."""
    sock = connect(path, timeout)
    try:
        try:
            protocol.send(sock, {"v": protocol.VERSION, **message}, fds)
        except OSError as e:
            raise NoPool(f"{path}: {e.strerror or e}") from None
        sock.settimeout(reply_timeout)
        try:
            data, got, _ = protocol.receive(sock)
        except OSError as e:
            raise PoolRefused({"error": "no-reply", "message": f"the pool at {path} did not "
                               f"answer: {e.strerror or e}", "hint": "see 'svlaunch pool status'"}) from None  # fmt: skip
    finally:
        sock.close()
    try:
        import json

        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        for fd in got:
            os.close(fd)
        raise PoolRefused({"error": "no-reply", "message": f"the pool at {path} closed the "
                           "connection without a reply", "hint": "see the pool's log"})  # fmt: skip
    if not reply.get("ok"):
        for fd in got:
            os.close(fd)
        raise PoolRefused(reply)
    return reply, got


def start(path: str, plan_file: str, fds: dict[str, int], options: dict[str, Any]) -> Started:
    """Ask the pool at ``path`` for an engine running ``plan_file``."""
    import engine

    names = list(fds)
    message = {
        "op": "start",
        "plan": os.path.abspath(plan_file),
        "fds": names,
        "engine": os.path.dirname(os.path.abspath(engine.__file__)),
        "options": options,
    }
    reply, got = call(path, message, tuple(fds[n] for n in names))
    if len(got) != 1 or not isinstance(reply.get("pid"), int):
        for fd in got:
            os.close(fd)
        raise NoPool("the pool's reply carried no engine pidfd")
    return Started(reply["pid"], reply.get("pid_start"), got[0])


def client_options(
    *, paused: bool = False, name: str | None = None, incoming: str | None = None
) -> dict[str, Any]:
    """What an exec'd engine would inherit from this process: ``SVLAUNCH_*``, cwd, umask;
    ``incoming`` (file:/abs/DIR) makes the request a restore."""
    umask = os.umask(0)
    os.umask(umask)
    opts: dict[str, Any] = {
        "env": {k: v for k, v in os.environ.items() if k.startswith(protocol.ENV_PREFIX)},
        "cwd": os.getcwd(),
        "umask": umask,
    }
    if paused:
        opts["paused"] = True
    if name:
        opts["name"] = name
    if incoming:
        opts["incoming"] = incoming
    return opts

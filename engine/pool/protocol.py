"""The pool's wire protocol: one JSON object per ``SOCK_SEQPACKET`` packet, fds by SCM_RIGHTS.

A client connects, sends one request and reads one reply; the pool then closes the connection.
Packets keep message boundaries, so there is no length prefix to get wrong and a message that
does not fit ``MAX_MESSAGE`` is cut (``MSG_TRUNC``) and refused, never read in pieces.

Requests (``v`` is ``VERSION``)::

    {"v": 1, "op": "start", "plan": "/abs/plan.json", "fds": ["lock", "log", "exit"],
     "engine": "/abs/path/of/engine", "options": {"paused": false, "env": {...}, ...}}
    {"v": 1, "op": "status"}
    {"v": 1, "op": "stop"}

``fds`` names, in order, the descriptors that travel with a ``start`` request (each name at
most once): ``lock`` (the VM's runtime lock, held by the engine for its life), ``log`` (its
stdout and stderr), ``exit`` (a file the engine, or its sandbox supervisor, fills with
its exit record when it ends, ``engine.ending``). ``engine`` is the client's ``engine`` package folder: a pool
that runs other code refuses (``wrong-engine``) and the client starts the engine itself.
``options`` (``START_OPTIONS``) carry what the exec path gets from its command line and
environment. A restore is a start with ``"incoming": "file:/abs/DIR"``: the VM is built from that
snapshot instead of booting (the plan's own ``incoming``, when it has one, must be the same).

Replies: ``{"ok": true, ...}`` (``start``: ``pid``, ``pid_start``, with the engine's pidfd as
the one SCM_RIGHTS fd) or ``{"ok": false, "error": CODE, "message": ..., "hint": ...}``.
"""

from __future__ import annotations

import array
import json
import socket
from typing import Any

VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8
FD_NAMES = ("lock", "log", "exit")
OPS = ("start", "status", "stop")
#: option -> type; anything else in ``options`` is refused by name
START_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "paused": bool,
    "verbose": bool,
    "env": dict,  # SVLAUNCH_* variables of the client, as the exec'd engine would inherit them
    "cwd": str,
    "umask": int,
    "name": str,  # a process name for host tools (``comm``), e.g. the VM's name
    "incoming": str,  # file:/abs/DIR: restore that snapshot (docs/snapshot.md)
}
ENV_PREFIX = "SVLAUNCH_"


class RequestError(Exception):
    """A request the pool refuses: ``code`` for programs, ``message`` and ``hint`` for people."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint

    def reply(self) -> dict[str, Any]:
        return {"ok": False, "error": self.code, "message": self.message, "hint": self.hint}


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def send(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([encode(message)], anc)


def receive(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One packet: (bytes, received fds, msg flags). The caller owns the fds, even on error."""
    data, anc, flags, _ = sock.recvmsg(
        MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if len(data) > MAX_MESSAGE:
        flags |= socket.MSG_TRUNC
    return data, fds, flags


def parse(data: bytes, flags: int, nfds: int) -> dict[str, Any]:
    """A request, checked for shape (not for what its paths and fds are: the server does that)."""
    if flags & socket.MSG_TRUNC:
        raise RequestError("too-large", f"a request must fit in {MAX_MESSAGE} bytes")
    if flags & socket.MSG_CTRUNC:
        raise RequestError("bad-fds", f"at most {MAX_FDS} descriptors may come with a request")
    try:
        req = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(
            "bad-json", f"not a JSON request: {e}", "send one JSON object per packet"
        ) from None
    if not isinstance(req, dict):
        raise RequestError("bad-request", "a request is a JSON object")
    if req.get("v") != VERSION:
        raise RequestError(
            "bad-version",
            f"request version {req.get('v')!r} is not {VERSION}",
            "client and pool are different svlaunch versions: 'svlaunch pool stop'",
        )
    op = req.get("op")
    if op not in OPS:
        raise RequestError("bad-op", f"unknown op {str(op)[:40]!r}", f"ops: {', '.join(OPS)}")
    if op != "start":
        if nfds:
            raise RequestError("bad-fds", f"op {op!r} takes no descriptors")
        return req
    plan = req.get("plan")
    if not isinstance(plan, str) or not plan.startswith("/"):
        raise RequestError(
            "bad-plan", "'plan' must be an absolute path", "the pool's working folder is not yours"
        )
    names = req.get("fds", [])
    if (
        not isinstance(names, list)
        or any(n not in FD_NAMES for n in names)
        or len(set(names)) != len(names)
    ):
        raise RequestError("bad-fds", f"'fds' must list distinct names of {', '.join(FD_NAMES)}")
    if len(names) != nfds:
        raise RequestError("bad-fds", f"'fds' names {len(names)} descriptors but {nfds} came")
    options = req.get("options", {})
    if not isinstance(options, dict):
        raise RequestError("bad-option", "'options' must be an object")
    for key, value in options.items():
        want = START_OPTIONS.get(key)
        if want is None:
            raise RequestError(
                "bad-option",
                f"unknown option {str(key)[:40]!r}",
                f"options: {', '.join(START_OPTIONS)}",
            )
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise RequestError("bad-option", f"option {key!r} has the wrong type")
    incoming = options.get("incoming")
    if incoming is not None:
        scheme, _, folder = incoming.partition(":")
        if scheme.lower() != "file" or not folder.startswith("/") or "\0" in folder:
            raise RequestError(
                "bad-option",
                f"option 'incoming' must be file:/absolute/folder, not {incoming[:200]!r}",
                "the pool restores snapshots from a folder (svlaunch snapshot NAME DIR)",
            )
    env = options.get("env", {})
    if not all(isinstance(k, str) and k.startswith(ENV_PREFIX) and isinstance(v, str)
               and "\0" not in k + v for k, v in env.items()):  # fmt: skip
        raise RequestError("bad-option", f"'env' may hold only {ENV_PREFIX}* string variables")
    return req

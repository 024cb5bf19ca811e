"""Forking the pool's spare engine: twice, off any request's path, so that a request only
hands its plan to an engine that is already there.

Split from ``server.py`` (the poll loop and the requests) because this is the one part that
runs in three processes (pool, middle, spare) and its rules are about descriptors and
sessions, not about requests.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from engine.pool import child, protocol
from engine.pool.protocol import RequestError

#: seconds the pool waits for the middle process's report (the pool's CLIENT_TIMEOUT)
REPORT_TIMEOUT = 2.0


@dataclass
class Spare:
    """An engine forked ahead of its request, waiting on ``chan``."""

    pid: int
    pidfd: int
    chan: socket.socket


def fork_spare(inherited: list[socket.socket], *, warm: bool) -> Spare:
    """Fork the next engine now, off any request's path: twice, so that it is in its own
    session and re-parented to init (or the nearest subreaper) once the middle process exits.
    It waits on ``chan`` for its request, or for EOF when the pool goes away. ``inherited``:
    the pool's sockets (listener, connections), which the spare closes."""
    chan, chan_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    report, report_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    detach = [*inherited, chan, report, report_w]
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # everything so far is read-only for the children: shared pages stay shared
    try:
        middle = os.fork()
        if middle == 0:
            _middle(chan_child, detach, report_w, warm)
        chan_child.close()
        report_w.close()
        os.waitpid(middle, 0)
        report.settimeout(REPORT_TIMEOUT)
        try:
            data, got, _ = protocol.receive(report)
        except OSError:
            data, got = b"", []
    finally:
        report.close()
        report_w.close()
        chan_child.close()
    if not data or len(got) != 1:
        for fd in got:
            close_quietly(fd)
        chan.close()
        raise RequestError("fork-failed", "the pool could not fork an engine (see its log)")
    return Spare(int(data), got[0], chan)


def _middle(chan: socket.socket, detach: list[Any], report_w: socket.socket, warm: bool) -> None:
    """The middle process: a new session, the spare engine forked from it, its pidfd sent to
    the pool (taken while the spare is our child: it names that process even if it dies)."""
    code = 1
    try:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            child.spare(chan, detach, warm=warm)
        pidfd = os.pidfd_open(pid)
        report_w.sendmsg(
            [str(pid).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", pidfd))]
        )
        code = 0
    finally:
        os._exit(code)


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def close_quietly(fd: int) -> None:
    """Close ``fd``; one already gone is not an error here."""
    try:
        os.close(fd)
    except OSError:
        pass

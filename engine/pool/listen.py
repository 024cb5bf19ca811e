"""The pool's listening socket: the one systemd passed (socket activation), checked, or a fresh
one bound at a path; and the identity of the socket file, so that the pool notices when its
path was removed or replaced.

Split from ``server.py``: set up once, before the loop, and shared by nothing else.
"""

from __future__ import annotations

import os
import socket
import stat

SD_LISTEN_FDS_START = 3


def activated_socket() -> socket.socket | None:
    """The socket systemd passed (``LISTEN_FDS``/``LISTEN_PID``), checked; None if none was."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)  # never passed on to an engine
    if count != 1:
        raise SystemExit(f"svlaunch-pool: expected one socket from systemd, got {count}")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as e:
        raise SystemExit(f"svlaunch-pool: descriptor 3 from systemd: {e.strerror}") from None
    if (
        sock.family != socket.AF_UNIX
        or sock.type != socket.SOCK_SEQPACKET
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        raise SystemExit(
            "svlaunch-pool: the socket from systemd must be a listening unix SOCK_SEQPACKET "
            "socket (ListenSequentialPacket=)"
        )
    os.set_inheritable(sock.fileno(), False)
    return sock


def bind_socket(path: str) -> socket.socket:
    """A fresh listening socket at ``path`` (mode 0600). The caller holds the pool lock, so a
    socket file already there is a dead pool's."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SystemExit(f"svlaunch-pool: {path} exists and is not a socket; not touching it")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


def socket_ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None

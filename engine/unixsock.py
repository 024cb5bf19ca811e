"""Listening unix sockets the engine creates (QMP, and any socket server of the engine's).

``bind_unix`` gives a socket that is 0600 from its creation (the mode is set on the socket before
``bind``), listening before its path exists (bound under a staging name, then hard-linked to the
path, which never replaces a file), after replacing only a stale socket nobody listens on.
``BoundSocket.unlink_if_ours`` removes the path at exit only if it is still the file this socket
created (same device and inode): the engine never unlinks a path it did not bind. docs/qmp.md,
"Sockets".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import stat

from engine.errors import HostError

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107
BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn


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
            log.warning("%s is no longer the socket the engine created; leaving it", self.path)
            return False
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            return True
        return False


def _remove_if_stale(path: str, what: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on (left by a crashed engine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HostError(
            f"{what} path {path} exists and is not a socket",
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
            f"{what} {path} exists and cannot be probed: {exc.strerror}",
            hint="remove it or choose another path",
        ) from None
    finally:
        probe.close()
    raise HostError(
        f"{what} {path} is in use by another running process",
        hint="stop that VM first ('svlaunch down NAME') or choose another path",
    )


def bind_unix(path: str, what: str = "QMP socket") -> BoundSocket:
    """A listening unix socket at ``path``, mode 0600 from its creation on.

    The socket is bound and listening under a temporary name in the same folder, then linked to
    ``path`` (``link`` never replaces a file): a client that sees the path can connect at once,
    and a file that appeared there meanwhile is never overwritten.
    """
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise HostError(
            f"{what} path is {len(os.fsencode(path))} bytes, over the unix limit of "
            f"{SUN_PATH_MAX}: {path}",
            hint="use a shorter path (or set SVLAUNCH_RUNTIME_DIR to a short folder)",
        )
    _remove_if_stale(path, what)
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
            f"{what} path {path} was taken by another process while the engine started",
            hint="stop that VM first ('svlaunch down NAME') or choose another path",
        ) from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise HostError(f"cannot listen on {what} {path}: {exc.strerror}") from None
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

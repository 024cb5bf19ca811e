"""Host files and sockets a process makes for a VM, and removes again: only ever its own.

Two VMs (or a VM and anything else) may name the same path by mistake. The rules here keep one
from breaking the other (docs/lifecycle.md):

- a listening socket replaces only a *stale* socket (nobody accepts on it); a live one, or a
  path that is not a socket, is refused with the pid that holds it;
- a file (a pidfile) is created exclusively (``O_EXCL``, never through a symlink);
- both are made with an explicit mode whatever the umask (``fchmod`` on the socket before
  ``bind``: Linux gives the socket file the socket inode's mode);
- what was made is remembered as (device, inode, change time), and removed at exit only if the
  path still names that file: a path reused by someone else since is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from typing import TYPE_CHECKING, Any

from engine.errors import HostError

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

#: (st_dev, st_ino, st_ctime_ns): one file, whatever its name is now. The change time tells a
#: file made at the same path later apart even when it gets the freed inode number again (ext4
#: and tmpfs reuse them at once); nothing here writes to a file after taking its identity.
FileId = tuple[int, int, int]

SOCKET_MODE = 0o600
PIDFILE_MODE = 0o644
SUN_PATH_MAX = 107
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def file_id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected unix socket (SO_PEERCRED; for a
    listener, the process that called ``listen``), in this process's pid namespace (0: none)."""
    import socket as _socket

    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(raw)[0])


def listener_pid(path: str, timeout: float = 1.0) -> int | None:
    """The pid listening on the unix socket ``path``, or None when nobody accepts there."""
    import socket as _socket

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except TimeoutError:  # a full backlog: somebody listens but does not accept
        return 0
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return None
        if exc.errno == errno.EAGAIN:  # a full backlog, non-blocking
            return 0
        raise
    else:
        return peer_pid(probe)
    finally:
        probe.close()


def clear_stale_socket(path: str, what: str) -> None:
    """Make ``path`` free for a new listening socket: remove a stale socket file; refuse a live
    socket (naming who holds it) and anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HostError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise HostError(
            f"{what} {path} exists and is {kind}; refusing to replace it",
            hint="remove it yourself if it is stale, or choose another path",
        )
    try:
        pid = listener_pid(path)
    except OSError as exc:
        raise HostError(f"{what} {path}: {exc.strerror}") from None
    if pid is not None:
        who = f"process {pid}" if pid else "another process"
        raise HostError(
            f"{what} {path} is in use by {who}",
            hint="stop that VM first ('svlaunch ps' lists VMs) or choose another path",
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # nobody listens: left behind by a crashed process


def listen_unix(path: str, what: str, *, backlog: int = 1) -> tuple[socket.socket, FileId]:
    """A non-inheritable listening unix socket at ``path`` (mode 0600 whatever the umask) and
    the identity of the socket file, for ``unlink_if_same`` at close.

    The socket is bound and listening under a staging name in the same folder first, then
    hard-linked to ``path``: a client that sees the path can connect at once (no "connection
    refused" between ``bind`` and ``listen``), and ``link`` never replaces a file that appeared
    at the path meanwhile. A file system without hard links gets a plain ``bind`` at ``path``.
    """
    import secrets

    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise HostError(
            f"{what} {path} is {len(os.fsencode(path))} bytes, over the unix limit of "
            f"{SUN_PATH_MAX}",
            hint="use a shorter path",
        )
    clear_stale_socket(path, what)
    staging = os.path.join(os.path.dirname(path), f".{os.getpid()}-{secrets.token_hex(4)}.sock")
    sock: socket.socket | None = None
    try:
        if len(os.fsencode(staging)) <= SUN_PATH_MAX:
            try:
                sock = _listening(staging, backlog, link_to=path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
        if sock is None:
            sock = _listening(path, backlog)
        if stat.S_IMODE(os.lstat(path).st_mode) != SOCKET_MODE:  # a stricter umask took bits
            os.chmod(path, SOCKET_MODE)
        st = os.lstat(path)  # after link, unlink and chmod: each moves the change time
    except FileExistsError:
        raise HostError(
            f"{what} {path} was taken by another process while this one started",
            hint="stop that VM first ('svlaunch ps' lists VMs) or choose another path",
        ) from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise HostError(
            f"{what}: cannot listen on {path}: {exc.strerror}",
            hint="check that the folder exists and is writable",
        ) from None
    return sock, file_id(st)


def _listening(where: str, backlog: int, link_to: str | None = None) -> socket.socket:
    """A socket listening at ``where`` (then at ``link_to`` instead, when given)."""
    import socket as _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), SOCKET_MODE)  # the socket file takes this mode (& ~umask)
        sock.bind(where)
        sock.listen(backlog)
        if link_to is not None:
            try:
                os.link(where, link_to)
            finally:
                os.unlink(where)
    except BaseException:
        sock.close()
        raise
    return sock


def create_exclusive(path: str, data: bytes, mode: int, what: str) -> FileId:
    """Create ``path`` holding ``data`` with ``mode`` (whatever the umask); refuse an existing
    path, a symlink included (``O_EXCL``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise HostError(
            f"{what} {path} already exists (another VM's, or left by a crashed one)",
            hint="check that no VM uses it, remove it, or choose another path",
        ) from None
    except OSError as exc:
        raise HostError(f"cannot create {what} {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        return file_id(os.fstat(fd))
    finally:
        os.close(fd)


def unlink_if_same(path: str, ident: Sequence[int] | None) -> bool:
    """Remove ``path`` if it still names the file ``ident`` (what this process made: a
    ``FileId``, or the list a JSON record keeps of one); True if it did. A path since replaced
    by someone else's file is left alone."""
    if ident is None:
        return False
    try:
        if file_id(os.lstat(path)) != tuple(ident):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


def plan_chardevs(plan: Any) -> list[Any]:
    """Every chardev of a plan: the declared ones, the serial's and those of devices."""
    chardevs = list(plan.chardevs)
    if plan.serial is not None:
        chardevs.append(plan.serial.chardev)
    chardevs += [d.chardev for d in plan.devices if getattr(d, "chardev", None) is not None]
    return chardevs


def tap_hold(ifname: str, netns: str | None = None) -> str:
    """The held path that stands for tap ``ifname``: its /sys/class/net entry, or for a VM in
    another network namespace (a sandbox's netns file) a name under that file, so two VMs in
    different namespaces may each have a tap of that name."""
    return os.path.join(netns, ifname) if netns else os.path.join("/sys/class/net", ifname)


def vsock_hold(guest_cid: int) -> str:
    """The held path that stands for a vsock guest CID: vhost-vsock's CIDs are one namespace
    per host (the kernel refuses a second VM's CID only when its guest starts the device)."""
    return f"/dev/vhost-vsock/cid-{guest_cid}"


def plan_made_paths(plan: Any) -> list[tuple[str, str]]:
    """(absolute path, role) of every host path the VM of ``plan`` creates or writes, that a
    second running VM must not use: QMP and listening chardev sockets ("socket"), file chardevs
    and the pidfile ("file"), writable drives ("drive"), taps by name ("tap", ``tap_hold``:
    Linux lets a second process attach to a multi-queue tap, so two VMs would share it) and
    vsock guest CIDs ("vsock", ``vsock_hold``)."""
    out: list[tuple[str, str]] = [(q, "socket") for q in plan.qmp]
    netns = plan.sandbox.netns if plan.sandbox is not None else None
    out += [
        (tap_hold(d.ifname, netns), "tap")
        for d in plan.devices
        if getattr(d, "kind", "") == "net" and getattr(d, "ifname", None)
    ]
    out += [
        (vsock_hold(d.guest_cid), "vsock")
        for d in plan.devices
        if getattr(d, "kind", "") == "vsock"
    ]
    for c in plan_chardevs(plan):
        if c.path and c.backend == "socket" and c.server:
            out.append((c.path, "socket"))
        elif c.path and c.backend == "file":
            out.append((c.path, "file"))
    if plan.pidfile:
        out.append((plan.pidfile, "file"))
    out += [(f.path, "drive") for f in plan.host_files if f.role == "drive" and f.writable]
    seen: set[str] = set()
    unique = []
    for path, role in out:
        path = os.path.abspath(path)
        if path not in seen:
            seen.add(path)
            unique.append((path, role))
    return unique

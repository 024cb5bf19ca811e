"""The runtime root and the folders in it that svlaunch trusts (docs/lifecycle.md).

Root: ``$SVLAUNCH_RUNTIME_DIR`` if set (tests), else ``/run/svlaunch`` as root, else
``$XDG_RUNTIME_DIR/svlaunch``, else ``/tmp/svlaunch-<uid>``. A root (and XDG_RUNTIME_DIR) is
trusted only when it is a folder owned by this user that nobody else can enter (no group or
other bits): a folder another user made, or could write into, is refused with the reason. The
root and each VM folder are opened with ``O_NOFOLLOW`` and checked the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from launcher.errors import HostError

RUNTIME_ENV = "SVLAUNCH_RUNTIME_DIR"
DIR_MODE = 0o700
FILE_MODE = 0o600
LOG_MODE = 0o640
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT_LOCK = ".lock"  # a dot name is never a VM name (engine.names)


def runtime_root() -> Path:
    env = os.environ.get(RUNTIME_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/svlaunch")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        trust(_lstat_dir(Path(xdg), "XDG_RUNTIME_DIR"), Path(xdg), "XDG_RUNTIME_DIR")
        return Path(xdg) / "svlaunch"
    return Path(f"/tmp/svlaunch-{os.getuid()}")


def _lstat_dir(path: Path, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise HostError(f"{what} {path}: {exc.strerror}") from None


def trust(st: os.stat_result, path: Path | str, what: str) -> None:
    """Refuse a folder svlaunch must not trust: a symlink, not a folder, another user's, or one
    that other users can enter or write."""
    if stat.S_ISLNK(st.st_mode):
        raise HostError(
            f"{what} {path} is a symlink; svlaunch never follows one there",
            hint=f"remove it (it was not made by svlaunch), or set {RUNTIME_ENV}",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise HostError(
            f"{what} {path} is not a folder",
            hint=f"remove it (it was not made by svlaunch), or set {RUNTIME_ENV}",
        )
    if st.st_uid != os.geteuid():
        raise HostError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
            "svlaunch does not trust it",
            hint=f"remove it, or set {RUNTIME_ENV} to a folder of your own (mode 0700)",
        )
    if st.st_mode & 0o077:
        raise HostError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can reach "
            "into it; svlaunch does not trust it",
            hint=f"chmod 700 {path}",
        )


def open_dir(
    name: str | Path, what: str, dir_fd: int | None = None, shown: Path | None = None
) -> int:
    """A descriptor of the trusted folder ``name`` (see ``_trust``), never through a symlink;
    ``shown`` is its full path, for messages."""
    shown = shown or Path(name)
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # a symlink, a file, another user's folder: say which
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except OSError:
                raise exc from None
            trust(st, shown, what)
        raise
    try:
        trust(os.fstat(fd), shown, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_root(create: bool) -> int | None:
    """The runtime root, trusted; None when it does not exist and ``create`` is false."""
    root = runtime_root()
    made = False
    if create:
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(root, DIR_MODE)
            made = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise HostError(
                f"cannot create the runtime folder {root}: {exc.strerror}",
                hint=f"set {RUNTIME_ENV} to a folder of your own that you can write",
            ) from None
    try:
        fd = open_dir(root, "runtime folder")
    except FileNotFoundError:
        if create:
            raise HostError(f"the runtime folder {root} vanished while svlaunch made it") from None
        return None
    except OSError as exc:
        raise HostError(f"runtime folder {root}: {exc.strerror}") from None
    if made:
        os.fchmod(fd, DIR_MODE)  # exact, whatever the umask
    return fd


@contextlib.contextmanager
def root_locked(root_fd: int) -> Iterator[None]:
    """Serialize claims on this host: checking other VMs' paths and recording ours is atomic."""
    fd = create_or_open(ROOT_LOCK, root_fd, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_or_open(name: str, dir_fd: int, access: int) -> int:
    """A regular file of ours in a trusted folder, made 0600 if missing."""
    flags = access | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise HostError(
            f"cannot write {name!r} in the runtime folder: {exc.strerror}",
            hint=f"check the runtime folder (or set {RUNTIME_ENV} to a folder you can write)",
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise HostError(f"{name} in the runtime folder is not a file of yours; remove it")
    return fd

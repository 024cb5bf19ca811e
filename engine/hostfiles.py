"""The one check for a host file a VM reads or writes: kernel, initrd, drive and pflash images.

``svlaunch check``, ``svlaunch up`` (both through ``launcher.validate.host``), the engine's
virtio-blk and QMP hot-plug (``blockdev-add``/``device_add``) all open a VM's files through
``open_host_file``, so a file the manifest path refuses is refused on every path, with the same
words. The rules (docs/qmp.md, "Host files"):

* The path is looked at first without being opened (``O_PATH|O_NOFOLLOW``): opening has side
  effects on some files (a FIFO blocks until a writer comes, ``/dev/watchdog`` arms a timer), so
  anything but a regular file (or a block device, where one is allowed) is refused before that.
  A symbolic link the operator names (``/dev/disk/by-id/...``, an image managed through links) is
  resolved first and its target checked and opened; messages name both.
* Regular files on kernel pseudo file systems (``/proc/self/mem``, ``/sys/...``) are refused:
  they look like files but are views of kernel or process state.
* Then the file is opened for real with ``O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC`` (never blocks) and
  must still be the inode that was checked; ``O_NONBLOCK`` is cleared afterwards.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from engine.errors import HostError

#: statfs f_type of kernel pseudo file systems (linux/magic.h): no disk image lives there
PSEUDO_FILESYSTEMS = {
    0x9FA0: "procfs",
    0x62656572: "sysfs",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0x27E0EB: "cgroupfs",
    0x63677270: "cgroup2fs",
    0xCAFE4A11: "bpffs",
    0x62656570: "configfs",
    0xDE5E81E4: "efivarfs",
    0x6165676C: "pstorefs",
    0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs",
    0x42494E4D: "binfmt_misc",
    0x65735543: "fusectl",
    0x19800202: "mqueue",
    0x6E736673: "nsfs",
    0x1CD1: "devpts",
}

_KIND_NAMES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a unix socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


@dataclass(frozen=True, slots=True)
class HostFileProblem:
    """Why a host file cannot be used: the message names the file, the hint says what to do."""

    message: str
    hint: str


class HostFileError(HostError):
    """A refused host file (``HostError``: exit 1, a QMP ``GenericError`` for hot-plug)."""

    def __init__(self, problem: HostFileProblem) -> None:
        super().__init__(problem.message, hint=problem.hint)
        self.problem = problem


def _kind(mode: int) -> str:
    for test, name in _KIND_NAMES:
        if test(mode):
            return name
    return "not a regular file"


def _fs_type(fd: int) -> int:
    """statfs f_type of the file system holding ``fd`` (0 when it cannot be told)."""
    import ctypes

    from engine.libc import libc

    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is the first long
    if libc.fstatfs(fd, buf) != 0:
        return 0
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def _shape_problem(path: str, what: str, st: os.stat_result, block_ok: bool) -> str:
    wanted = "a regular file or a block device" if block_ok else "a regular file"
    if stat.S_ISREG(st.st_mode) or (block_ok and stat.S_ISBLK(st.st_mode)):
        return ""
    return f"{what} {path} is {_kind(st.st_mode)}, not {wanted}"


def open_host_file(
    path: str, *, what: str, write: bool = False, block_ok: bool = True, direct: bool = False
) -> int:
    """Open ``path`` for a VM (read-only unless ``write``); the fd is blocking and close-on-exec.

    ``what`` names the file in messages ("drive image", "kernel"); ``block_ok`` allows a block
    device; ``direct`` adds O_DIRECT. Raises ``HostFileError`` with a hint.
    """

    def refuse(message: str, hint: str) -> HostFileError:
        return HostFileError(HostFileProblem(message, hint))

    if not path or "\0" in path:
        raise refuse(f"{what} path {path!r} is empty or holds a NUL byte", "give a file path")
    given, path = path, os.path.realpath(path)
    if path != given:  # a link the manifest names: check and open what it points at
        what = f"{what} {given} ->"
    try:
        probe = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise refuse(
            f"{what}: cannot open {path}: {e.strerror}",
            "check the path (relative paths are relative to the manifest's folder)",
        ) from None
    try:
        before = os.fstat(probe)
        shape = _shape_problem(path, what, before, block_ok)
        if shape:
            raise refuse(
                shape,
                "a VM's images must be plain files"
                + (" or block devices" if block_ok else "")
                + " (a FIFO, socket or character device could block or crash the engine)",
            )
        fs = PSEUDO_FILESYSTEMS.get(_fs_type(probe))
        if fs is not None:
            raise refuse(
                f"{what} {path} is on {fs}, a kernel pseudo file system, not a disk image",
                "point it at an image file",
            )
    finally:
        os.close(probe)
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
    except OSError as e:
        hint = "fix the permissions or run as the VM's user"
        if e.errno == errno.EROFS:
            hint = "the file system is read-only: mark the image readonly"
        elif e.errno == errno.EPERM and write:
            hint = "the file is immutable or append-only (lsattr): mark the image readonly"
        elif direct and e.errno == errno.EINVAL:
            hint = "this file system does not support O_DIRECT: set direct = false"
        elif e.errno in (errno.ELOOP, errno.ENOENT):
            hint = "the path changed while it was being opened: check what replaces it"
        need = "read and write" if write else "read"
        raise refuse(f"{what}: cannot open {path} to {need}: {e.strerror}", hint) from None
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise refuse(
            f"{what} {path} was replaced while it was being opened",
            "make sure nothing else writes the folder, then try again",
        )
    os.set_blocking(fd, True)
    return fd


def check_host_file(
    path: str, *, what: str, write: bool = False, block_ok: bool = True
) -> HostFileProblem | None:
    """``open_host_file`` as a probe: None when the file is usable, else why not."""
    try:
        fd = open_host_file(path, what=what, write=write, block_ok=block_ok)
    except HostFileError as e:
        return e.problem
    os.close(fd)
    return None

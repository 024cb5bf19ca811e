"""The only module in ``engine/ozone`` that makes raw system calls.

Thin ctypes wrappers over libc (mount, umount2, pivot_root, chroot, unshare, setns, sethostname, prctl,
capget/capset) plus the few ``os`` calls the sandbox needs, so the rest of the package is plain
logic that unit tests can drive in a temp dir. Every wrapper raises ``OSError`` with the errno and
the call's arguments (``engine.libc.check``); callers turn that into a ``SandboxError`` naming the
step. ctypes (not cffi) because it is in the standard library and so also works inside a fresh
jail.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource

from engine.libc import check as _check
from engine.libc import libc as _libc

# unshare(2)/setns(2) flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_MOVE = 8192
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# prctl(2) options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CAPGET = 125
_SYS_CAPSET = 126
_SYS_CLOSE_RANGE = 436
_CAP_VERSION_3 = 0x20080522
_NS_GET_NSTYPE = 0xB703


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x})",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount2({target!r}, {flags})")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)),
        f"pivot_root({new_root!r}, {put_old!r})",
    )


def chroot(path: str) -> None:
    os.chroot(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name!r})")


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    args = [ctypes.c_ulong(a) for a in (a2, a3, a4, a5)]
    return _check(_libc.prctl(option, *args), f"prctl({option}, {a2}, {a3})")


def mknod(path: str, mode: int, major: int, minor: int) -> None:
    os.mknod(path, mode, os.makedev(major, minor))


def close_range(first: int, last: int) -> None:
    """Close fds ``first..last`` (inclusive) in one call; falls back to a loop on old kernels."""
    if last < first:
        return
    if _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), 0) == 0:
        return
    os.closerange(first, last + 1)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread as 64-bit masks."""
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_SYS_CAPGET, ctypes.byref(hdr), data), "capget")
    lo, hi = data[0], data[1]
    return (
        lo.effective | (hi.effective << 32),
        lo.permitted | (hi.permitted << 32),
        lo.inheritable | (hi.inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(
        _libc.syscall(_SYS_CAPSET, ctypes.byref(hdr), data),
        f"capset(eff={effective:#x}, prm={permitted:#x}, inh={inheritable:#x})",
    )


def set_ids(uid: int, gid: int) -> None:
    """Drop supplementary groups, then gid, then uid (this order: after setuid we could not)."""
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def setrlimit(which: int, soft: int, hard: int) -> None:
    resource.setrlimit(which, (soft, hard))


def ns_type(path: str) -> int | None:
    """The CLONE_NEW* type of namespace file ``path`` (NS_GET_NSTYPE), None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def cap_last_cap(proc: str = "/proc") -> int:
    try:
        with open(f"{proc}/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40

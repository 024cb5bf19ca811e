"""Can this host give a drive its ``aio``? The engine's own answer, for ``svlaunch check`` and for
the device that fails to start (one wording on both paths, as ``engine.hostfiles``).

``check_drive`` opens the image exactly as virtio-blk does (O_DIRECT when ``direct``) and sets
up the back end on it, so what passes here starts there; ``explain`` turns the kernel's refusal
into what the operator can change: a sysctl (``kernel.io_uring_disabled``, ``fs.aio-max-nr``),
a seccomp profile, a kernel too old, a file system without O_DIRECT.
"""

from __future__ import annotations

import errno
import os

from engine.hostfiles import HostFileError, HostFileProblem, open_host_file

OTHERS = {
    "io_uring": 'use aio = "native" (with direct = true) or aio = "off" (with direct = false)',
    "native": 'use aio = "io_uring", or aio = "off" with direct = false',
}


def _sysctl(name: str, proc: str = "/proc") -> str | None:
    try:
        with open(os.path.join(proc, "sys", *name.split(".")), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def explain(mode: str, err: OSError, proc: str = "/proc") -> HostFileProblem:
    """Why the kernel refused ``aio = mode`` (``err`` from setting it up), and what to do."""
    other = OTHERS.get(mode, "")
    code = err.errno
    if mode == "io_uring":
        if code == errno.ENOSYS:
            return HostFileProblem("this kernel has no io_uring (CONFIG_IO_URING is off)", other)
        if code == errno.EPERM:
            disabled = _sysctl("kernel.io_uring_disabled", proc)
            if disabled == "2":
                return HostFileProblem(
                    "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2)",
                    f"sysctl -w kernel.io_uring_disabled=0, or {other}",
                )
            if disabled == "1":
                group = _sysctl("kernel.io_uring_group", proc) or "?"
                return HostFileProblem(
                    "io_uring is limited to group id "
                    f"{group} (sysctl kernel.io_uring_disabled = 1, kernel.io_uring_group) and "
                    "this process is not in it",
                    f"run the VM as a member of that group, or {other}",
                )
            return HostFileProblem(
                "io_uring_setup was refused (EPERM): a seccomp filter or a security module "
                "forbids io_uring here (container runtimes block it by default)",
                "allow io_uring_setup, io_uring_enter and io_uring_register in the container's "
                f"seccomp profile, or {other}",
            )
        if code == errno.ENOMEM:
            return HostFileProblem(
                "io_uring could not allocate its rings (locked memory: before Linux 5.12 "
                "they count against RLIMIT_MEMLOCK)",
                f"raise the VM user's locked-memory limit (ulimit -l), or {other}",
            )
        if code in (errno.EINVAL, errno.EOPNOTSUPP):
            detail = err.strerror if code == errno.EOPNOTSUPP else "it refused the set-up flags"
            return HostFileProblem(
                f"this kernel's io_uring is too old ({detail}): the engine needs Linux 5.10 "
                "or newer (restricted, registered rings)",
                other,
            )
    if mode == "native":
        if code == errno.ENOSYS:
            return HostFileProblem("this kernel has no Linux AIO (CONFIG_AIO is off)", other)
        if code == errno.EAGAIN:
            used, limit = _sysctl("fs.aio-nr", proc), _sysctl("fs.aio-max-nr", proc)
            return HostFileProblem(
                f"Linux AIO is out of events: fs.aio-nr is {used} of fs.aio-max-nr {limit}",
                "raise it (sysctl -w fs.aio-max-nr=1048576) or stop other AIO users",
            )
        if code == errno.EPERM:
            return HostFileProblem(
                "io_setup was refused (EPERM): a seccomp filter or a security module forbids "
                "Linux AIO here",
                f"allow io_setup, io_submit, io_getevents and io_destroy, or {other}",
            )
    return HostFileProblem(f"setting up aio {mode!r} failed: {err.strerror or err}", other)


def check_drive(
    path: str, *, what: str, aio: str, direct: bool, write: bool
) -> tuple[str, HostFileProblem] | None:
    """None when the engine can open ``path`` and serve it with ``aio``; else the drive key at
    fault (``file`` or ``aio``) and why."""
    from engine.io import open_backend

    try:
        fd = open_host_file(path, what=what, write=write, direct=direct)
    except HostFileError as e:
        return "file", e.problem
    try:
        backend = open_backend(aio, fd, 1)
    except OSError as e:
        p = explain(aio, e)
        return "aio", HostFileProblem(f"aio {aio!r} is not available: {p.message}", p.hint)
    else:
        backend.close()
    finally:
        os.close(fd)
    return None

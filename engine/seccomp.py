"""Seccomp for the engine: one call per thread, ``seccomp.install("vcpu", enabled=plan.seccomp)``.

Filters are per thread (no TSYNC): each thread calls ``install(role)`` once, at the start of its
run loop, after its set-up. Filters stack: a thread inherits its creator's filter, so the main
thread installs ``"main"`` only after it has started the vCPU and I/O threads. The default action
kills the whole process (SCMP_ACT_KILL_PROCESS); the supervisor sees SIGSYS and names the syscall.

Filters are compiled to classic BPF by libseccomp (pyseccomp) and loaded with one
``seccomp(2)`` call. In a sandbox they are compiled *outside* the jail by the supervisor
(``export_all``) and read from ``$SVLAUNCH_SECCOMP_DIR``, because libseccomp's loader
(``ctypes.util.find_library``) needs ``ldconfig``, which the jail does not have.

Environment: ``SVLAUNCH_SECCOMP=off`` disables (as ``-disable-seccomp``); ``=log`` allows
everything but logs what the list lacks to the kernel log (to grow the list);
``SVLAUNCH_TEST_FORBIDDEN_SYSCALL=1`` (or a role name) makes ``install`` call a forbidden syscall
right after loading, to test the kill path; ``SVLAUNCH_SECCOMP_MEASURE=FILE`` appends
``"<tid> <role>"`` for ``scripts/measure-syscalls``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import threading

from engine.libc import check, libc
from engine.seccomp_lists import ROLES, allowed

_SYS_SECCOMP = 317  # x86_64
_SYS_PERSONALITY = 135
_SECCOMP_SET_MODE_FILTER = 1
_PR_SET_NO_NEW_PRIVS = 38
_cache: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def mode() -> str:
    """``kill`` (default), ``log`` or ``off``, from ``$SVLAUNCH_SECCOMP``."""
    value = os.environ.get("SVLAUNCH_SECCOMP", "kill").lower()
    return value if value in ("kill", "log", "off") else "kill"


def compile_bpf(role: str, how: str = "kill") -> bytes:
    """The role's filter as classic BPF (libseccomp does the compiling)."""
    import pyseccomp as sc  # lazy: not importable inside a jail, and costly

    if role not in ROLES:
        raise ValueError(f"unknown seccomp role {role!r} (roles: {', '.join(ROLES)})")
    default = sc.KILL_PROCESS if how == "kill" else sc.LOG
    flt = sc.SyscallFilter(default)
    for name in allowed(role):
        flt.add_rule(sc.ALLOW, name)
    fd = os.memfd_create(f"seccomp-{role}", os.MFD_CLOEXEC)
    try:
        flt.export_bpf(os.fdopen(os.dup(fd), "wb"))
        os.lseek(fd, 0, os.SEEK_SET)
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
        return out
    finally:
        os.close(fd)


def export_all(directory: str, how: str | None = None, cache_dir: str | None = None) -> list[str]:
    """Write ``<role>.bpf`` for every role into ``directory`` (the supervisor, before the jail).

    With ``cache_dir`` the programs are kept there, keyed by the lists and the mode, so a later
    sandbox start skips importing pyseccomp and compiling (a few hundred ms under TCG)."""
    how = "log" if (how or mode()) == "log" else "kill"
    key = hashlib.sha256(repr((how, sorted((r, sorted(allowed(r))) for r in ROLES))).encode())
    out = []
    for role in ROLES:
        cached = (
            os.path.join(cache_dir, f"seccomp-{key.hexdigest()[:16]}-{role}.bpf")
            if cache_dir
            else None
        )
        prog = None
        if cached and os.path.exists(cached):
            with open(cached, "rb") as f:
                prog = f.read()
        if not prog:
            prog = compile_bpf(role, how)
            if cached:
                from engine.ozone.state import private_dirs

                private_dirs(os.path.dirname(cached))
                tmp = f"{cached}.{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(prog)
                os.replace(tmp, cached)
        path = os.path.join(directory, f"{role}.bpf")
        with open(path, "wb") as f:
            f.write(prog)
        out.append(path)
    return out


def _bpf(role: str, how: str) -> bytes:
    with _lock:
        key = (role, how)
        if key not in _cache:
            d = os.environ.get("SVLAUNCH_SECCOMP_DIR")
            if d:
                with open(os.path.join(d, f"{role}.bpf"), "rb") as f:
                    _cache[key] = f.read()
            else:
                _cache[key] = compile_bpf(role, how)
        return _cache[key]


def load_bpf(prog: bytes) -> None:
    """Install ``prog`` on the calling thread (sets no_new_privs first, as seccomp requires)."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, one, zero, zero, zero), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(
        libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog)),
        "seccomp(SET_MODE_FILTER)",
    )


def install(role: str, *, enabled: bool = True) -> None:
    """Restrict the calling thread to ``role``'s allow-list ("main", "vcpu" or "io")."""
    if role not in ROLES:
        raise ValueError(f"unknown seccomp role {role!r} (roles: {', '.join(ROLES)})")
    measure = os.environ.get("SVLAUNCH_SECCOMP_MEASURE")
    if measure:
        with open(measure, "a") as f:
            f.write(f"{threading.get_native_id()} {role}\n")
    how = mode()
    if not enabled or how == "off":
        return
    # A module first imported after this point (pyroute2 on netdev_add) must not have its
    # bytecode written: mkdir/rename are set-up calls that no list allows (SIGSYS otherwise).
    sys.dont_write_bytecode = True
    load_bpf(_bpf(role, how))
    trigger = os.environ.get("SVLAUNCH_TEST_FORBIDDEN_SYSCALL", "")
    if trigger == role or (trigger == "1" and role == "main"):
        # test-only: a syscall no list allows; the kernel kills the process here
        libc.syscall(_SYS_PERSONALITY, ctypes.c_ulong(0xFFFFFFFF))


def counts() -> dict[str, int]:
    """Allow-list size per role (for the docs and the report)."""
    return {role: len(allowed(role)) for role in ROLES}

"""The child's half of ``realize``: enter the namespaces and the jail, drop privileges, exec.

This runs in the forked child only, between ``fork`` and ``execve``: plain syscalls, no threads,
and every failure is reported to the supervisor through ``StepFailed`` (the supervisor turns it
into a ``SandboxError``). The order is fixed and each step says why it sits where it does.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any, TypeVar

from engine.ozone import caps, rootfs
from engine.ozone import sys as osys
from engine.ozone.spec import SandboxSpec

T = TypeVar("T")
RO = osys.MS_RDONLY | osys.MS_NOSUID | osys.MS_NODEV


class StepFailed(Exception):
    def __init__(self, step: str, err: OSError, path: str = "", hint: str = "") -> None:
        super().__init__(f"{step}: {err}")
        self.step, self.err, self.path, self.hint = step, err, path, hint


def _step(name: str, fn: Callable[..., T], *args: Any, path: str = "", hint: str = "") -> T:
    try:
        return fn(*args)
    except OSError as e:
        raise StepFailed(name, e, path, hint) from None


def close_inherited_fds(keep: set[int]) -> None:
    """Close every fd above 2 but ``keep``: nothing the caller had open may leak into the jail."""
    fds = sorted(k for k in keep if k > 2)
    lo = 3
    for fd in [*fds, 1 << 20]:
        osys.close_range(lo, min(fd - 1, (1 << 31) - 2))
        lo = fd + 1


def enter(spec: SandboxSpec, netns_fd: int | None, root_mode: str = rootfs.PIVOT) -> None:
    """Namespaces → mounts → pivot_root (or move+chroot) → devices → rlimits → caps/uid → no_new_privs."""
    jail = spec.jail
    last_cap = osys.cap_last_cap()  # read now: the jail has no /proc
    # new UTS/IPC/mount namespaces (PID came from the supervisor's fork): nothing below is seen
    # by the host, and every mount made from here on disappears with the namespace
    _step("namespaces", osys.unshare, osys.CLONE_NEWNS | osys.CLONE_NEWUTS | osys.CLONE_NEWIPC)
    _step("namespaces", osys.sethostname, spec.hostname)
    # join the manifest's netns before pivot_root: its path is a host path
    if netns_fd is not None:
        _step("netns", osys.setns, netns_fd, osys.CLONE_NEWNET, path=spec.netns or "",
              hint="the netns file must come from `ip netns add` (or be /proc/PID/ns/net)")  # fmt: skip
        os.close(netns_fd)
    # host mount events still reach us (slave), ours never reach the host
    _step("mounts", osys.mount, None, "/", None, osys.MS_REC | osys.MS_SLAVE)
    _step(
        "mounts", osys.mount, jail, jail, None, osys.MS_BIND, path=jail
    )  # pivot_root wants a mount
    for b in spec.binds:
        target = jail + b.target
        _step("mounts", osys.mount, b.source, target, None, osys.MS_BIND, path=b.source)
        flags = osys.MS_REMOUNT | osys.MS_BIND | osys.MS_NOSUID | osys.MS_NODEV
        if not b.writable:
            flags |= osys.MS_RDONLY
        if b.role != "runtime":
            flags |= osys.MS_NOEXEC
        _step("mounts", osys.mount, None, target, None, flags, path=target)
    # the jail becomes "/": pivot_root, or MS_MOVE + chroot on an initramfs root (rootfs.py)
    _step("pivot_root" if root_mode == rootfs.PIVOT else "move_root", rootfs.enter_root, jail,
          root_mode, path=jail)  # fmt: skip
    # device nodes: only now, on the jail's own fs, owned by the VM's uid
    for d in spec.devices:
        _step("devices", osys.mknod, d.path, 0o020000 | d.mode, d.major, d.minor, path=d.path)
        os.chown(d.path, spec.uid, spec.gid)
        os.chmod(d.path, d.mode)
    # the jail root itself becomes read-only: the engine writes only where a bind says so
    _step(
        "mounts",
        osys.mount,
        None,
        "/",
        None,
        osys.MS_REMOUNT | osys.MS_BIND | osys.MS_RDONLY | osys.MS_NOSUID,
    )
    # rlimits while we still hold CAP_SYS_RESOURCE (raising a hard limit needs it)
    for name, soft, hard in spec.rlimits:
        _step("rlimits", osys.setrlimit, getattr(resource, name), soft, hard, path=name)
    # capabilities and ids together: the drop order is the kernel's (see caps.drop_to)
    _step("capabilities", caps.drop_to, spec.caps, spec.uid, spec.gid, last_cap)
    # no_new_privs last: nothing we exec can gain privileges, and the engine's seccomp needs it
    _step("no_new_privs", osys.prctl, osys.PR_SET_NO_NEW_PRIVS, 1)
    # die with the supervisor (set after the uid switch, which clears it)
    _step("no_new_privs", osys.prctl, osys.PR_SET_PDEATHSIG, 9)

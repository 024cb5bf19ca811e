"""KVM ioctls and their errors: one call path (cffi, -1/errno) for ``kvm.py`` and ``kvm_state.py``.

Every failure raises ``KvmError`` naming the ioctl, the errno and what it usually means on this
kind of call, so "KVM_CREATE_VCPU failed: EINVAL" arrives with "the vCPU id is above the host's
limit" attached.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.machine import kvm_sys as k

if TYPE_CHECKING:
    from typing import Any

ffi, libc = k.ffi, k.libc

#: errno → meaning, per ioctl (falls back to the generic table).
_MEANINGS: dict[str, dict[int, str]] = {
    "open /dev/kvm": {
        errno.ENOENT: "/dev/kvm does not exist: the kvm module is not loaded or virtualization is off",
        errno.EACCES: "/dev/kvm is not permitted for this user",
        errno.EPERM: "/dev/kvm is not permitted for this user",
        errno.ENXIO: "the kvm module is loaded but has no hardware backend",
    },
    "KVM_CREATE_VM": {
        errno.ENOMEM: "the host is out of memory",
        errno.EINVAL: "the host refuses the VM type",
        errno.EMFILE: "this process has too many open files",
    },
    "KVM_CREATE_VCPU": {
        errno.EINVAL: "the vCPU id is above the host's limit (KVM_CAP_MAX_VCPU_ID) or too many vCPUs",
        errno.EEXIST: "a vCPU with this id already exists",
        errno.ENOMEM: "the host is out of memory",
    },
    "KVM_SET_USER_MEMORY_REGION": {
        errno.EEXIST: "the range overlaps another memory slot",
        errno.EINVAL: "the address or size is not page-aligned, or the slot number is too high",
        errno.EFAULT: "the host mapping is not valid user memory",
    },
    "KVM_GET_SUPPORTED_CPUID": {errno.E2BIG: "more CPUID entries than the buffer holds"},
    "KVM_SET_CPUID2": {
        errno.E2BIG: "too many CPUID entries",
        errno.EINVAL: "the CPUID table is inconsistent (e.g. XSAVE sizes)",
    },
    "KVM_SET_MSRS": {errno.EINVAL: "an MSR value is not accepted"},
    "KVM_CREATE_IRQCHIP": {errno.EEXIST: "the VM already has an irqchip"},
    "KVM_CREATE_PIT2": {errno.EEXIST: "the VM already has a PIT", errno.ENOENT: "no irqchip yet"},
    "KVM_IRQFD": {errno.EBUSY: "the eventfd is already bound to an interrupt"},
    "KVM_IOEVENTFD": {errno.EEXIST: "an ioeventfd with the same address/datamatch exists"},
    "KVM_RUN": {
        errno.EINTR: "interrupted by a signal (a kick)",
        errno.EFAULT: "guest memory mapping went away",
        errno.ENOEXEC: "the vCPU state is invalid for entry",
    },
}
_GENERIC: dict[int, str] = {
    errno.ENOMEM: "the host is out of memory",
    errno.EBADF: "the file descriptor is closed",
    errno.ENOTTY: "the host KVM does not support this ioctl",
    errno.EFAULT: "bad pointer passed to the kernel",
}


class KvmError(EngineError):
    """A KVM call failed: carries the ioctl name, the errno and its meaning."""

    def __init__(self, ioctl: str, err: int, detail: str = "", hint: str = "") -> None:
        meaning = _MEANINGS.get(ioctl, {}).get(err) or _GENERIC.get(err) or os.strerror(err)
        name = errno.errorcode.get(err, str(err))
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{ioctl} failed{extra}: {name}: {meaning}", hint=hint)
        self.ioctl = ioctl
        self.errno = err
        self.meaning = meaning


def ioctl(fd: int, req: int, arg: Any = None, *, detail: str = "") -> int:
    if arg is None:
        r = libc.ioctl(fd, req, ffi.cast("unsigned long", 0))
    elif isinstance(arg, int):
        r = libc.ioctl(fd, req, ffi.cast("unsigned long", arg))
    else:
        r = libc.ioctl(fd, req, arg)
    if r < 0:
        raise KvmError(k.IOCTL_NAMES.get(req, hex(req)), ffi.errno, detail)
    return r

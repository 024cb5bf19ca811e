"""vhost (kernel) back ends: hand a virtqueue's rings to the host kernel.

The VMM programs ``/dev/vhost-net`` or ``/dev/vhost-vsock`` once at DRIVER_OK and then stays off
the data path: the kernel reads the queue's ioeventfd as the *kick* and writes the device's
irqfd as the *call*, so neither a notify nor an interrupt passes through Python. The memory
table maps guest-physical ranges to this process's addresses (``GuestRegion.host_addr``).
ioctl numbers are linux/vhost.h's (``_IOW(VHOST_VIRTIO, ...)``); pointer arguments go through ctypes
structures, whose buffers ``fcntl.ioctl`` passes by address.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import TYPE_CHECKING

from engine.errors import HostError
from engine.machine.memory import GuestMemory
from engine.virtio.queue import Queue

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

VHOST_GET_FEATURES = 0x8008AF00
VHOST_SET_FEATURES = 0x4008AF00
VHOST_SET_OWNER = 0xAF01
VHOST_RESET_OWNER = 0xAF02
VHOST_SET_MEM_TABLE = 0x4008AF03
VHOST_SET_VRING_NUM = 0x4008AF10
VHOST_SET_VRING_ADDR = 0x4028AF11
VHOST_SET_VRING_BASE = 0x4008AF12
VHOST_GET_VRING_BASE = 0xC008AF12
VHOST_SET_VRING_KICK = 0x4008AF20
VHOST_SET_VRING_CALL = 0x4008AF21
VHOST_NET_SET_BACKEND = 0x4008AF30
VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60
VHOST_VSOCK_SET_RUNNING = 0x4004AF61

_VRING_STATE = struct.Struct("<II")  # index, num
_VRING_FILE = struct.Struct("<Ii")  # index, fd


class _VringAddr(ctypes.Structure):
    _fields_ = (
        ("index", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("desc_user_addr", ctypes.c_uint64),
        ("used_user_addr", ctypes.c_uint64),
        ("avail_user_addr", ctypes.c_uint64),
        ("log_guest_addr", ctypes.c_uint64),
    )


def open_vhost(path: str, what: str, module: str) -> int:
    """Open a vhost device, or fail with the device's name and how to get it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise HostError(
                f"{what}: {path} does not exist on this host",
                hint=f"load the module (modprobe {module}) or run where it exists; "
                "the nested rig's L1 has it",
            ) from None
        raise HostError(f"{what}: cannot open {path}: {e.strerror}", hint="run as root") from None


class VhostBackend:
    """One vhost fd: owner, features, memory table and vrings."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what

    def _ioctl(self, req: int, arg: int | ReadableBuffer, name: str) -> None:
        try:
            fcntl.ioctl(self.fd, req, arg)
        except OSError as e:
            raise HostError(f"{self.what}: {name} failed: {e.strerror}") from None

    def set_owner(self) -> None:
        self._ioctl(VHOST_SET_OWNER, 0, "VHOST_SET_OWNER")

    def get_features(self) -> int:
        buf = bytearray(8)
        self._ioctl(VHOST_GET_FEATURES, buf, "VHOST_GET_FEATURES")
        return struct.unpack("<Q", buf)[0]

    def set_features(self, features: int) -> None:
        self._ioctl(VHOST_SET_FEATURES, struct.pack("<Q", features), "VHOST_SET_FEATURES")

    def set_mem_table(self, mem: GuestMemory) -> None:
        regions = mem.regions
        buf = bytearray(struct.pack("<II", len(regions), 0))
        for r in regions:
            buf += struct.pack("<QQQQ", r.guest_addr, r.size, r.host_addr, 0)
        self._ioctl(VHOST_SET_MEM_TABLE, buf, "VHOST_SET_MEM_TABLE")

    def _host(self, mem: GuestMemory, addr: int) -> int:
        r = mem.find_region(addr)
        if r is None:
            raise HostError(f"{self.what}: ring at {addr:#x} is outside guest RAM")
        return r.host_addr + addr - r.guest_addr

    def set_vring(self, index: int, q: Queue, mem: GuestMemory, call_fd: int) -> None:
        """Program vring ``index`` from the validated queue ``q``; kick = its ioeventfd."""
        if q.kick_fd is None:
            raise HostError(f"{self.what}: queue {index} has no notify eventfd")
        self._ioctl(VHOST_SET_VRING_NUM, _VRING_STATE.pack(index, q.size), "VHOST_SET_VRING_NUM")
        addr = _VringAddr(
            index,
            0,
            self._host(mem, q.desc_addr),
            self._host(mem, q.used_addr),
            self._host(mem, q.avail_addr),
            0,
        )
        self._ioctl(VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR")
        self._ioctl(
            VHOST_SET_VRING_BASE, _VRING_STATE.pack(index, q.next_avail), "VHOST_SET_VRING_BASE"
        )
        self._ioctl(
            VHOST_SET_VRING_KICK, _VRING_FILE.pack(index, q.kick_fd), "VHOST_SET_VRING_KICK"
        )
        self._ioctl(VHOST_SET_VRING_CALL, _VRING_FILE.pack(index, call_fd), "VHOST_SET_VRING_CALL")

    def get_vring_base(self, index: int) -> int:
        """The kernel's next avail index of vring ``index`` (stop the device first)."""
        buf = bytearray(_VRING_STATE.pack(index, 0))
        self._ioctl(VHOST_GET_VRING_BASE, buf, "VHOST_GET_VRING_BASE")
        return _VRING_STATE.unpack(buf)[1]

    def net_set_backend(self, index: int, tap_fd: int) -> None:
        self._ioctl(VHOST_NET_SET_BACKEND, _VRING_FILE.pack(index, tap_fd), "VHOST_NET_SET_BACKEND")

    def vsock_set_cid(self, cid: int) -> None:
        self._ioctl(VHOST_VSOCK_SET_GUEST_CID, struct.pack("<Q", cid), "VHOST_VSOCK_SET_GUEST_CID")

    def vsock_set_running(self, running: bool) -> None:
        self._ioctl(
            VHOST_VSOCK_SET_RUNNING, struct.pack("<i", int(running)), "VHOST_VSOCK_SET_RUNNING"
        )

    def reset_owner(self) -> None:
        try:
            fcntl.ioctl(self.fd, VHOST_RESET_OWNER, 0)
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

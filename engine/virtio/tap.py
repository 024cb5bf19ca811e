"""TAP devices for virtio-net: open by name, create with pyroute2, or adopt inherited fds.

Each queue pair gets its own fd on the same tap (IFF_MULTI_QUEUE when there is more than one).
Every fd carries a 12-byte virtio-net header (IFF_VNET_HDR + TUNSETVNETHDRSZ 12), which is
exactly the VERSION_1 ``virtio_net_hdr``: guest buffers go to ``writev`` and come from
``readv`` unchanged, and checksum/TSO offloads are done by the host kernel from that header.
A tap svlaunch created is remembered and deleted on ``close()``; one that existed is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct

from engine.errors import HostError

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

VNET_HDR_LEN = 12
IFNAMSIZ = 16


def _ifreq(name: str, flags: int) -> bytearray:
    return bytearray(struct.pack("16sH22x", name.encode(), flags))


class Tap:
    """One tap interface and one fd per queue pair."""

    def __init__(self, name: str, fds: list[int], *, created: bool) -> None:
        self.name = name
        self.fds = fds
        self.created = created

    @classmethod
    def open(cls, ifname: str | None, queues: int = 1, *, create: bool = True) -> Tap:
        """Attach ``queues`` fds to tap ``ifname``, creating it (pyroute2) when it does not exist."""
        if not ifname:
            raise HostError(
                "virtio-net: a tap backend needs ifname= or fds=", hint="set netdev ifname=tapN"
            )
        from engine.device_rules import ifname_problem

        problem = ifname_problem(ifname)  # e.g. tap%d: the kernel would make a numbered tap
        if problem is not None:
            raise HostError(problem.message, hint=problem.hint)
        created = False
        if create and not cls._exists(ifname):
            cls._create(ifname, queues > 1)
            created = True
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
        fds: list[int] = []
        try:
            for _ in range(queues):
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
                fds.append(fd)
                fcntl.ioctl(fd, TUNSETIFF, _ifreq(ifname, flags))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            if created:
                cls._delete(ifname)
            hint = "run as root (CAP_NET_ADMIN) and check that /dev/net/tun exists"
            if e.errno == 22 and queues > 1:
                hint = f"tap {ifname} exists without multi_queue: delete it or use queues=1"
            elif e.errno == 22:
                hint = f"tap {ifname} exists with multi_queue: delete it or use queues>1"
            elif e.errno == errno.EBUSY:
                # A single-queue tap takes one opener: another VM or program holds it.
                raise HostError(
                    f"tap {ifname} is in use by another process (a running VM or program holds it)",
                    hint="give this VM its own tap name, or stop what holds it "
                    f"(ls -l /proc/*/fd 2>/dev/null | grep tun; ip -d link show {ifname})",
                ) from None
            raise HostError(f"cannot attach to tap {ifname}: {e.strerror}", hint=hint) from None
        tap = cls(ifname, fds, created=created)
        try:
            tap._setup_fds()
        except BaseException:
            tap.close()  # closes the fds and deletes the tap if this call created it
            raise
        return tap

    @classmethod
    def from_fds(cls, fds: tuple[int, ...] | list[int]) -> Tap:
        """Adopt tap fds passed to svlaunch (``fd=``/``fds=``, QMP ``getfd``): they must be open
        taps. The Tap owns them from this call on; when it refuses them it closes them."""
        try:
            name = ""
            for fd in fds:
                buf = bytearray(40)
                try:
                    fcntl.ioctl(fd, TUNGETIFF, buf)
                except OSError as e:
                    raise HostError(
                        f"virtio-net: fd {fd} is not a tap device ({e.strerror})",
                        hint="pass an fd opened on /dev/net/tun with TUNSETIFF",
                    ) from None
                name = buf[:16].split(b"\0", 1)[0].decode(errors="replace")
                flags = struct.unpack_from("H", buf, 16)[0]
                if not flags & IFF_VNET_HDR:
                    raise HostError(
                        f"virtio-net: tap fd {fd} ({name}) was opened without IFF_VNET_HDR",
                        hint="open the tap with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR",
                    )
                os.set_blocking(fd, False)
            tap = cls(name, list(fds), created=False)
            tap._setup_fds()
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return tap

    def _setup_fds(self) -> None:
        for fd in self.fds:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        self.set_offload(0)

    def set_offload(self, flags: int) -> None:
        """Which offloads the tap may hand us (they must match what the guest acked)."""
        for fd in self.fds:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)

    @staticmethod
    def _exists(ifname: str) -> bool:
        """Whether the link exists in this thread's network namespace (sysfs may show another)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=ifname))

    @staticmethod
    def _create(ifname: str, multi_queue: bool) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                ipr.link(
                    "add",
                    ifname=ifname,
                    kind="tuntap",
                    mode="tap",
                    ifr={"no_pi": True, "vnet_hdr": True, "multi_queue": multi_queue},
                )
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.link("set", index=idx, state="up")
        except Exception as e:
            raise HostError(
                f"cannot create tap {ifname}: {e}",
                hint="run as root (CAP_NET_ADMIN), or create the tap first and pass ifname=",
            ) from None

    @staticmethod
    def _delete(ifname: str) -> None:
        from pyroute2 import IPRoute

        with contextlib.suppress(Exception), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if idx:
                ipr.link("del", index=idx[0])

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        if self.created:
            self._delete(self.name)
            self.created = False

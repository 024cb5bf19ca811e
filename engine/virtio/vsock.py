"""vhost-vsock (virtio 1.2 §5.10): AF_VSOCK between host and guest, served by the host kernel.

The device model only negotiates and hands over: at DRIVER_OK the rx and tx rings go to
``/dev/vhost-vsock`` (kick = queue ioeventfd, call = irqfd, memory table from the
``GuestMemory`` regions' host addresses), then VHOST_VSOCK_SET_GUEST_CID and SET_RUNNING. The
event queue stays with the VMM. Its one event is for snapshots: the host's connections are
kernel state a snapshot cannot keep, so a restored device posts TRANSPORT_RESET (§5.10.6.5):
the guest's driver drops its connections, keeps its listeners and reads the guest CID again
(a clone gets its own). Hosts without ``/dev/vhost-vsock`` get one clear error naming the
device and the fix.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.device_rules import DEFAULT_QUEUE_SIZE
from engine.errors import HostError
from engine.virtio.device import VIRTIO_ID_VSOCK, Loop, VirtioDevice, bit
from engine.virtio.vhost import VhostBackend, open_vhost

CID_MIN = 3
CID_MAX = (1 << 32) - 2
RING_BITS = bit(28) | bit(29)
VIRTIO_VSOCK_F_SEQPACKET = 1
#: Device features passed through from the kernel. The rest of VHOST_GET_FEATURES is vhost's
#: own business and must not reach the driver: VIRTIO_F_ACCESS_PLATFORM (33), once acked, puts
#: vhost in IOTLB mode, where every ring access waits for translations this VMM never sends
#: (the vsock stalls: connects time out); VHOST_F_LOG_ALL (26) is migration dirty logging.
DEVICE_BITS = bit(VIRTIO_VSOCK_F_SEQPACKET)
EVENT_QUEUE = 2
VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0


@dataclass(frozen=True, slots=True)
class VsockState:
    """The CID the guest had when the snapshot was taken (a restore may give another)."""

    guest_cid: int


class Vsock(VirtioDevice):
    """One vhost-vsock device; rx (0) and tx (1) are kernel queues, event (2) is ours."""

    device_id = VIRTIO_ID_VSOCK
    state_type = VsockState

    def __init__(
        self,
        name: str,
        guest_cid: int,
        *,
        vhostfd: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        loop: Loop | None = None,
    ) -> None:
        if not CID_MIN <= guest_cid <= CID_MAX:
            raise HostError(
                f"vhost-vsock {name}: guest-cid {guest_cid} is outside {CID_MIN}..{CID_MAX}",
                hint="0-2 are reserved (hypervisor, local, host); pick 3 or more",
            )
        what = f"vhost-vsock {name}"
        fd = vhostfd if vhostfd is not None else open_vhost("/dev/vhost-vsock", what, "vhost_vsock")
        self.backend = VhostBackend(fd, what)
        self.backend.set_owner()
        self._owned = True
        vh = self.backend.get_features()
        self.ring_features = vh & RING_BITS
        super().__init__(name, [queue_size] * 3, vh & DEVICE_BITS, loop=loop)
        self.kernel_queues = frozenset({0, 1})
        self.vhost = True
        self.guest_cid = guest_cid
        self.config = bytearray(struct.pack("<Q", guest_cid))
        self._reset_pending = False

    def on_activate(self) -> None:
        assert self.mem is not None and self.interrupt is not None
        call = getattr(self.interrupt, "irqfd", None)
        if call is None:
            raise HostError(
                f"vhost-vsock {self.name}: needs an irqfd interrupt (set_interrupt(fd))"
            )
        b = self.backend
        if not self._owned:
            b.set_owner()
            self._owned = True
        b.set_features(self.acked_features)
        b.set_mem_table(self.mem)
        for i in (0, 1):
            q = self.queues[i]
            if not q.active:
                raise HostError(f"vhost-vsock {self.name}: the driver did not enable queue {i}")
            b.set_vring(i, q, self.mem, call)
        b.vsock_set_cid(self.guest_cid)
        b.vsock_set_running(True)

    def on_reset(self) -> None:
        self.backend.vsock_set_running(False)
        self.backend.reset_owner()
        self._owned = False

    def close(self) -> None:
        self.backend.close()

    # -- snapshot (engine/snapshot/) --------------------------------------------------------------

    def on_freeze(self) -> None:
        """Stop the kernel's rings and learn where it is in them (its avail index; the used
        index is in guest memory), so the transport's queue state is the kernel's."""
        assert self.mem is not None
        self.backend.vsock_set_running(False)
        for i in (0, 1):
            q = self.queues[i]
            q.next_avail = self.backend.get_vring_base(i)
            q.next_used = self.mem.read_u16(q.used_addr + 2)

    def on_thaw(self) -> None:
        self.backend.vsock_set_running(True)

    def snapshot_state(self) -> VsockState:
        return VsockState(self.guest_cid)

    def restore_state(self, state: VsockState) -> None:
        self._reset_pending = True  # posted when the device thaws (process_queue)

    def process_queue(self, index: int) -> None:
        """The event queue: post TRANSPORT_RESET once after a restore, if the driver left a
        buffer for it (Linux keeps eight there)."""
        if index != EVENT_QUEUE or not self._reset_pending:
            return
        q = self.queues[EVENT_QUEUE]
        mem = self.mem
        if not q.active or mem is None:
            return
        chain = q.pop()
        if chain is None:
            return  # no buffer yet: the driver's next kick brings one
        self._reset_pending = False
        n = chain.write(mem, struct.pack("<I", VIRTIO_VSOCK_EVENT_TRANSPORT_RESET))
        q.add_used(chain, n)
        self.signal(EVENT_QUEUE)

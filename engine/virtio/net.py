"""virtio-net (virtio 1.2 §5.1) on a tap, in Python or handed to vhost-net.

Queues: ``rx0, tx0, rx1, tx1, …`` and, with more than one pair, a control queue last
(VIRTIO_NET_F_CTRL_VQ + VIRTIO_NET_F_MQ; the guest picks how many pairs to use with
VQ_PAIRS_SET). The guest's 12-byte ``virtio_net_hdr`` is the tap's vnet header, so TX is one
``writev`` of the chain's buffers and RX one ``readv`` into them, straight between the tap and
guest memory (``chain.host_iovec``: no copy, no Python object per buffer), and the host kernel
does the checksum and segmentation offloads the header asks for.

Offloads (§5.1.3.1, docs/virtio.md): the tap takes any vnet header a writer gives it, so the
guest's CSUM, HOST_TSO4/6 and HOST_ECN frames go out as they are; the tap hands us partial
checksums and GSO frames only for what TUNSETOFFLOAD allows, which is exactly what the guest
acked (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). MRG_RXBUF is offered with vhost only: the Python
path gives each frame one chain (the guest then posts 64 KiB "big packet" chains, so a whole
GSO frame is one ``readv``), while mergeable buffers would split one frame over many chains.

Batching: a TX kick drains every available chain, an RX wake-up reads as many frames as the
guest has buffers (``RX_BUDGET`` at most), and each batch ends with one interrupt, which
EVENT_IDX may suppress. When the guest has no RX buffers the device stops polling the tap and
the kernel queues (then drops) frames, as a NIC would: no host memory grows, no loop spins.

With ``vhost=True`` the rings go to ``/dev/vhost-net`` at DRIVER_OK and the data path never
enters Python (kick = queue ioeventfd, call = irqfd).

Per request the host does bounded work: a TX chain longer than ``MAX_TX_FRAME`` (the vnet header
and the largest frame a tap takes, 64 KiB of GSO payload) is dropped without a copy, an RX chain
receives one frame (at most 64 KiB, the tap's; a frame longer than the chain is dropped, never
delivered cut short), a control request is read 4 bytes deep.

The feature bits and their negotiation (offload dependencies, tap offloads, vhost-net's bits,
the MAC) are ``net_features.py``; this module is the device and its RX/TX/control data path.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from dataclasses import dataclass
from functools import partial

from engine.device_rules import DEFAULT_QUEUE_SIZE
from engine.errors import HostError
from engine.virtio.device import (
    VIRTIO_ID_NET,
    Loop,
    VirtioDevice,
    bit,
)
from engine.virtio.iov import IOV_MAX, readv_raw, writev_raw
from engine.virtio.net_features import (
    FEATURE_NEEDS,
    OFFLOAD_FEATURES,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_OK,
    VIRTIO_NET_S_LINK_UP,
    parse_mac,
    tun_offloads,
    vhost_net_features,
)
from engine.virtio.tap import VNET_HDR_LEN, Tap
from engine.virtio.vhost import VhostBackend, open_vhost

log = logging.getLogger(__name__)

#: Frames one RX wake-up reads at most: a queue's worth at the default size. The tap's epoll
#: registration is level-triggered, so the rest waits one loop turn, and a busy tap cannot keep
#: the loop from the other devices on it (a guest may make its queue 32768 entries long).
RX_BUDGET = 256
#: The longest TX chain sent to the tap: vnet header, Ethernet + VLAN header, 64 KiB IP packet.
MAX_TX_FRAME = VNET_HDR_LEN + 18 + 65535
_CONFIG = struct.Struct("<6sHH")  # mac, status, max_virtqueue_pairs


@dataclass(frozen=True, slots=True)
class NetState:
    """What a snapshot keeps of a NIC beyond its transport: the pairs the driver enabled."""

    active_pairs: int


class Net(VirtioDevice):
    """One virtio-net device with ``queue_pairs`` pairs on one tap."""

    device_id = VIRTIO_ID_NET
    state_type = NetState

    def __init__(
        self,
        name: str,
        tap: Tap,
        *,
        mac: str | None = None,
        queue_pairs: int = 1,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        vhost: bool = False,
        vhostfds: tuple[int, ...] = (),
        offloads: bool = True,
        loop: Loop | None = None,
    ) -> None:
        if len(tap.fds) != queue_pairs:
            raise HostError(
                f"virtio-net {name}: {len(tap.fds)} tap fds for {queue_pairs} queue pairs"
            )
        features = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS)
        if offloads:
            features |= OFFLOAD_FEATURES
        sizes = [queue_size] * (2 * queue_pairs)
        if queue_pairs > 1:
            features |= bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ)
            sizes.append(64)
        self.vhost = vhost
        self._vhost: list[VhostBackend] = []
        if vhost:
            fds = list(vhostfds) or [
                open_vhost("/dev/vhost-net", f"virtio-net {name} (vhost=on)", "vhost_net")
                for _ in range(queue_pairs)
            ]
            self._vhost = [VhostBackend(fd, f"virtio-net {name}") for fd in fds]
            vh_features = self._vhost[0].get_features()
            # vhost-net merges RX buffers itself (the Python path gives each frame one chain).
            features |= vh_features & bit(VIRTIO_NET_F_MRG_RXBUF)
            # The offloads are the tap's (vhost-net hands it the guest's vnet header as is).
            features &= (
                vh_features
                | OFFLOAD_FEATURES
                | bit(VIRTIO_NET_F_MAC)
                | bit(VIRTIO_NET_F_STATUS)
                | bit(VIRTIO_NET_F_CTRL_VQ)
                | bit(VIRTIO_NET_F_MQ)
                | bit(VIRTIO_NET_F_MRG_RXBUF)
            )
            # Ring features are whatever the kernel implements.
            self.ring_features = vh_features & (bit(28) | bit(29))
        super().__init__(name, sizes, features, loop=loop)
        if vhost:
            self.kernel_queues = frozenset(range(2 * queue_pairs))
        self.tap = tap
        self.pairs = queue_pairs
        self.active_pairs = 1
        self.mac = parse_mac(mac)
        self.config = bytearray(_CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, queue_pairs))
        self._polling: set[int] = set()
        # A tap cuts a frame to the buffers given and says only how much it copied, so each RX
        # readv ends with one iovec entry of one host byte: a frame that reaches it was longer
        # than the chain.
        self._overflow_byte = ctypes.create_string_buffer(1)
        self._overflow = struct.pack("<QQ", ctypes.addressof(self._overflow_byte), 1)
        self.rx_dropped = 0
        self.tx_dropped = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def features_ok(self, acked: int) -> str | None:
        for feature, needs in FEATURE_NEEDS.items():
            if acked & bit(feature) and not acked & needs:
                return f"feature bit {feature} acked without bit(s) {needs:#x} it depends on"
        return None

    def on_activate(self) -> None:
        self.tap.set_offload(tun_offloads(self.acked_features))
        if self.vhost:
            self._start_vhost()
            return
        self.on_loop(self._start_polling)

    def _start_polling(self) -> None:
        with self.lock:
            if self.mem is None or self.loop is None:
                return
            for pair in range(self.pairs):
                self._poll(pair, True)

    def _poll(self, pair: int, on: bool) -> None:
        if self.loop is None:
            return
        fd = self.tap.fds[pair]
        if on and pair not in self._polling:
            self.loop.add_reader(fd, partial(self.guarded, self._rx, pair))
            self._polling.add(pair)
        elif not on and pair in self._polling:
            self.loop.remove_reader(fd)
            self._polling.discard(pair)

    def on_reset(self) -> None:
        if self.vhost:
            for vh in self._vhost:
                vh.reset_owner()
        self.active_pairs = 1
        loop = self.loop
        if loop is None or not self._polling:
            return
        if getattr(loop, "thread_id", None) == threading.get_ident():
            for pair in sorted(self._polling):
                self._poll(pair, False)
            return
        # From a vCPU thread: unregister on the loop, by fd, before the fds can be closed.
        fds = [self.tap.fds[p] for p in self._polling]
        self._polling.clear()

        def unregister() -> None:
            for fd in fds:
                loop.remove_reader(fd)

        loop.call_soon_threadsafe(unregister)

    def close(self) -> None:
        for vh in self._vhost:
            vh.close()
        self.tap.close()

    # -- snapshot (engine/snapshot/; vhost-net is refused there, as by StratoVirt) ---------------

    def on_freeze(self) -> None:
        for pair in sorted(self._polling):
            self._poll(pair, False)  # frames wait in the tap; ``thaw`` polls again

    def snapshot_state(self) -> NetState:
        return NetState(self.active_pairs)

    def restore_state(self, state: NetState) -> None:
        self.active_pairs = max(1, min(state.active_pairs, self.pairs))

    def _start_vhost(self) -> None:
        assert self.mem is not None and self.interrupt is not None
        call = getattr(self.interrupt, "irqfd", None)
        if call is None:
            raise HostError(f"virtio-net {self.name}: vhost needs an irqfd interrupt")
        features = vhost_net_features(self.acked_features)
        for pair, vh in enumerate(self._vhost):
            vh.set_owner()
            vh.set_features(features)
            vh.set_mem_table(self.mem)
            for k in range(2):
                q = self.queues[2 * pair + k]
                if q.active:
                    vh.set_vring(k, q, self.mem, call)
                    vh.net_set_backend(k, self.tap.fds[pair])

    # -- queues ------------------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        if index == 2 * self.pairs:
            self._ctrl(index)
        elif index % 2 == 0:
            self._rx(index // 2)
            self._poll(index // 2, True)  # the guest posted buffers: listen to the tap again
        else:
            self._tx(index // 2)

    def _tx(self, pair: int) -> None:
        """Every chain the guest made available, one ``writev`` each; one interrupt for all."""
        q = self.queues[2 * pair + 1]
        if not q.active:
            return
        mem = self.mem
        assert mem is not None
        fd = self.tap.fds[pair]
        stats = self.stats
        while (chain := q.pop()) is not None:
            stats.requests += 1
            size = chain.readable_len
            if not VNET_HDR_LEN < size <= MAX_TX_FRAME:
                stats.errors += 1
                self.tx_dropped += 1
            else:
                try:
                    if len(chain.raddrs) == 1:  # one buffer (an ACK): one view is cheapest
                        os.write(fd, mem.view(chain.raddrs[0], size))
                    else:
                        iov = chain.host_iovec(mem, False)
                        writev_raw(fd, iov.data, iov.count)
                    stats.bytes_in += size - VNET_HDR_LEN
                except OSError as e:  # EAGAIN (the tap's queue is full), EINVAL (a bad header)
                    self.tx_dropped += 1
                    log.debug("%s: tap write failed: %s", self.name, e)
            q.add_used(chain, 0)
        self.signal(2 * pair + 1)

    def _rx(self, pair: int) -> None:
        """As many frames as the guest has buffers for (``RX_BUDGET`` at most), one ``readv``
        each; one interrupt for all."""
        index = 2 * pair
        q = self.queues[index]
        if not q.active:
            return
        mem = self.mem
        assert mem is not None
        fd = self.tap.fds[pair]
        stats = self.stats
        for _ in range(RX_BUDGET):
            chain = q.pop()
            if chain is None:
                self._poll(pair, False)  # no buffers: let the kernel hold the frames
                break
            room = chain.writable_len
            if room < VNET_HDR_LEN:
                stats.errors += 1
                q.add_used(chain, 0)
                continue
            try:
                iov = chain.host_iovec(mem, True)
                if iov.count < IOV_MAX:  # one host byte past the chain: n > room says "cut"
                    n = readv_raw(fd, iov.data + self._overflow, iov.count + 1)
                else:
                    n = readv_raw(fd, iov.data, iov.count)
                    room -= 1  # no room for the probe: a frame that fills the chain is dropped
            except BlockingIOError:
                q.undo_pop()
                break
            except OSError:
                q.undo_pop()
                self._poll(pair, False)  # the tap went away (deleted): stop listening
                break
            stats.requests += 1
            if n > room:  # the frame did not fit (the tap cut it): never deliver it cut short
                self.rx_dropped += 1
                stats.errors += 1
                q.add_used(chain, 0)
                continue
            # num_buffers = 1 (§5.1.6.4: without MRG_RXBUF each frame is one chain); the tap
            # leaves those two header bytes alone.
            if chain.wlens[0] >= VNET_HDR_LEN:
                mem.write(chain.waddrs[0] + 10, b"\x01\x00")
            else:
                chain.write(mem, b"\x01\x00", 10)
            stats.bytes_out += n - VNET_HDR_LEN
            q.add_used(chain, n)
        self.signal(index)

    def _ctrl(self, index: int) -> None:
        q = self.queues[index]
        if not q.active:
            return
        mem = self.mem
        assert mem is not None
        while (chain := q.pop()) is not None:
            ack = VIRTIO_NET_ERR
            if chain.readable_len >= 2 and chain.writable_len >= 1:
                cls, cmd = chain.read(mem, 0, 2)
                if (
                    cls == VIRTIO_NET_CTRL_MQ
                    and cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
                    and chain.readable_len >= 4
                ):
                    (pairs,) = struct.unpack("<H", chain.read(mem, 2, 2))
                    if 1 <= pairs <= self.pairs:
                        self.active_pairs = pairs
                        ack = VIRTIO_NET_OK
            if chain.writable_len >= 1:
                chain.write(mem, bytes([ack]))
                q.add_used(chain, 1)
            else:
                q.add_used(chain, 0)
        self.signal(index)

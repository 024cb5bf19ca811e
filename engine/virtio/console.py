"""virtio-console (virtio 1.2 §5.3), the single-port console: Linux's ``/dev/hvc0``.

Without VIRTIO_CONSOLE_F_MULTIPORT the device has exactly one port on receiveq 0 / transmitq 1
and Linux's virtio_console driver registers it as hvc0 at once, with no control-queue
handshake; on microvm each ``virtconsole`` is its own virtio-mmio device anyway, so one port per
device loses nothing.

Guest output: each kick's transmit buffers are read (at most ``TX_MAX`` bytes of each request:
Linux's hvc writes a page at most, a port write 32 KiB, while a hostile chain of aliasing
buffers can be gigabytes long; the rest of such a request is dropped and counted in
``tx_dropped``) and handed to the backend in one write. A chardev backend queues them and
writes them out in chunks (docs/console.md); it takes only what its bounded queue has room for,
so a request that does not fit stays with the device, unanswered, and the device stops taking
requests until the chardev says it has room again: the guest's hvc driver waits, nothing is
lost, no memory grows. Host input goes into a bounded buffer
(``RX_BUFFER``) and from there into the guest's receive buffers; when the buffer is full the
backend stops polling (``free() == 0``) until the guest posts buffers again, so a fast producer
can neither block the loop nor grow memory without bound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.device_rules import DEFAULT_QUEUE_SIZE
from engine.machine.chardev_out import LIMIT as OUTPUT_LIMIT
from engine.virtio.chardev_io import CharBackend
from engine.virtio.device import VIRTIO_ID_CONSOLE, Loop, VirtioDevice, bit

if TYPE_CHECKING:
    from engine.virtio.chain import DescriptorChain
    from engine.virtio.queue import Queue

VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

RECEIVEQ = 0
TRANSMITQ = 1
RX_BUFFER = 64 * 1024
#: The most guest output one transmit request makes the host copy (the rest is dropped): Linux's
#: largest port write, and no more than the room a full chardev queue announces when it drains
#: (half its limit), so a held request always fits once the chardev calls back.
TX_MAX = min(32 * 1024, OUTPUT_LIMIT // 2)
#: The most one write hands a backend that has no bounded queue of its own (``FdBackend``).
TX_BATCH = 256 * 1024

_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr


@dataclass(frozen=True, slots=True)
class ConsoleState:
    """Host input received and not yet given to the guest."""

    rx: bytes


class Console(VirtioDevice):
    """One virtconsole port on a character backend."""

    device_id = VIRTIO_ID_CONSOLE
    state_type = ConsoleState

    def __init__(
        self,
        name: str,
        backend: CharBackend,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        loop: Loop | None = None,
    ) -> None:
        super().__init__(
            name, [queue_size, queue_size], bit(VIRTIO_CONSOLE_F_EMERG_WRITE), loop=loop
        )
        self.backend = backend
        self.config = bytearray(_CONFIG.pack(80, 25, 1, 0))
        self._rx = bytearray()
        self._attached = False
        self._held: tuple[DescriptorChain, bytes] | None = None  # a request waiting for room
        self.tx_dropped = 0
        #: Close the backend with the device (set by the factory when it opened the backend).
        self.owns_backend = False

    # -- backend side (loop thread) --------------------------------------------------------------

    def _free(self) -> int:
        with self.lock:
            if self.mem is None or self.broken or self.frozen:
                return 0
            return RX_BUFFER - len(self._rx)

    def _sink(self, data: bytes) -> int:
        with self.lock:
            room = RX_BUFFER - len(self._rx)
            taken = data[:room]
            self._rx += taken
        self.guarded(self._flush_rx)
        return len(taken)

    def on_activate(self) -> None:
        self.on_loop(self._attach)

    def _attach(self) -> None:
        if not self._attached and self.loop is not None:
            self.backend.attach(self.loop, self._sink, self._free)
            notify_room = getattr(self.backend, "notify_room", None)
            if notify_room is not None:
                notify_room(lambda: self.guarded(self._transmit))
            self._attached = True
        elif self._attached:
            self.backend.resume_input()

    def on_reset(self) -> None:
        self._rx.clear()
        self._held = None

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if self.owns_backend and close is not None:
            close()

    def on_freeze(self) -> None:
        """A held transmit request goes back to the ring (the last chain popped): a snapshot
        keeps the ring, not the request, and the restored device pops it again."""
        if self._held is not None:
            chain, data = self._held
            self._held = None
            self.queues[TRANSMITQ].undo_pop()
            self.stats.requests -= 1
            self.stats.bytes_in -= len(data)
            self.tx_dropped -= chain.readable_len - len(data)

    def snapshot_state(self) -> ConsoleState:
        return ConsoleState(bytes(self._rx))

    def restore_state(self, state: ConsoleState) -> None:
        self._rx[:] = state.rx[:RX_BUFFER]

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver's emergency write (``emerg_wr`` at offset 8): one character out."""
        if offset == 8 and self.has_feature(VIRTIO_CONSOLE_F_EMERG_WRITE):
            self.backend.write(data[:1])
            self.stats.bytes_in += 1

    # -- queues ------------------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        if index == TRANSMITQ:
            self._transmit()
        elif index == RECEIVEQ:
            self._flush_rx()
            if self._attached and len(self._rx) < RX_BUFFER:
                self.backend.resume_input()

    def _transmit(self) -> None:
        """Every request the backend has room for, in one write; a request that does not fit
        is held (unanswered) until the backend's room callback runs this again."""
        q = self.queues[TRANSMITQ]
        if not q.active:
            return
        mem = self.mem
        assert mem is not None
        room_of = getattr(self.backend, "room", None)  # None: a backend that takes everything
        room = room_of() if room_of is not None else TX_BATCH
        parts: list[bytes] = []
        taken: list[DescriptorChain] = []
        size = 0
        while True:
            if self._held is not None:
                chain, data = self._held
                self._held = None
            else:
                popped = q.pop()
                if popped is None:
                    break
                chain, data = popped, popped.read(mem, 0, TX_MAX)
                self.tx_dropped += chain.readable_len - len(data)
                self.stats.requests += 1
                self.stats.bytes_in += len(data)
            if size + len(data) > room:
                if room_of is not None:
                    self._held = (chain, data)  # waits for room: the guest waits for its buffer
                    break
                self._write(parts, taken, q)  # a batch's worth for a backend without a queue
                parts, taken, size = [], [], 0
            parts.append(data)
            taken.append(chain)
            size += len(data)
        self._write(parts, taken, q)

    def _write(self, parts: list[bytes], taken: list[DescriptorChain], q: Queue) -> None:
        if not taken:
            return
        data = b"".join(parts)
        if data:
            self.backend.write(data)
        for chain in taken:
            q.add_used(chain, 0)
        self.signal(TRANSMITQ)

    def _flush_rx(self) -> None:
        q = self.queues[RECEIVEQ]
        if not q.active or not self._rx:
            return
        mem = self.mem
        assert mem is not None
        sent = False
        while self._rx and (chain := q.pop()) is not None:
            n = chain.write(mem, bytes(self._rx[: chain.writable_len]))
            del self._rx[:n]
            self.stats.requests += 1
            self.stats.bytes_out += n
            q.add_used(chain, n)
            sent = True
        if sent:
            self.signal(RECEIVEQ)

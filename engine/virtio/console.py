"""virtio-console (virtio 1.2 §5.3), the single-port console: Linux's ``/dev/hvc0``.

Without VIRTIO_CONSOLE_F_MULTIPORT the device has exactly one port on receiveq 0 / transmitq 1
and Linux's virtio_console driver registers it as hvc0 at once, with no control-queue
handshake; on microvm each ``virtconsole`` is its own virtio-mmio device anyway, so one port per
device loses nothing.

Guest output is written to the backend as it arrives (the backend drops rather than block the
guest), at most ``TX_MAX`` bytes of each request: Linux's hvc writes a page at most, a port
write 32 KiB, while a hostile chain of aliasing buffers can be gigabytes long; the rest of such
a request is dropped and counted in ``tx_dropped``. Host input goes into a bounded buffer
(``RX_BUFFER``) and from there into the guest's receive buffers; when the buffer is full the
backend stops polling (``free() == 0``) until the guest posts buffers again, so a fast producer
can neither block the loop nor grow memory without bound.
"""

from __future__ import annotations

import struct

from engine.virtio.chardev_io import CharBackend
from engine.virtio.device import VIRTIO_ID_CONSOLE, Loop, VirtioDevice, bit

VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

RECEIVEQ = 0
TRANSMITQ = 1
RX_BUFFER = 64 * 1024
#: The most guest output one transmit request makes the host copy (the rest is dropped).
TX_MAX = 64 * 1024

_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr


class Console(VirtioDevice):
    """One virtconsole port on a character backend."""

    device_id = VIRTIO_ID_CONSOLE

    def __init__(
        self, name: str, backend: CharBackend, *, queue_size: int = 256, loop: Loop | None = None
    ) -> None:
        super().__init__(
            name, [queue_size, queue_size], bit(VIRTIO_CONSOLE_F_EMERG_WRITE), loop=loop
        )
        self.backend = backend
        self.config = bytearray(_CONFIG.pack(80, 25, 1, 0))
        self._rx = bytearray()
        self._attached = False
        self.tx_dropped = 0
        #: Close the backend with the device (set by the factory when it opened the backend).
        self.owns_backend = False

    # -- backend side (loop thread) --------------------------------------------------------------

    def _free(self) -> int:
        with self.lock:
            if self.mem is None or self.broken:
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
            self._attached = True
        elif self._attached:
            self.backend.resume_input()

    def on_reset(self) -> None:
        self._rx.clear()

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if self.owns_backend and close is not None:
            close()

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
        q = self.queues[TRANSMITQ]
        if not q.active:
            return
        mem = self.mem
        assert mem is not None
        while (chain := q.pop()) is not None:
            data = chain.read(mem, 0, TX_MAX)
            self.tx_dropped += chain.readable_len - len(data)
            if data:
                self.backend.write(data)
            self.stats.requests += 1
            self.stats.bytes_in += len(data)
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

"""The contract between a virtio device model and its transport.

Devices never touch KVM (Firecracker's rule): a device declares its id, features, config bytes
and queue sizes, and at DRIVER_OK the transport hands it ``activate(mem, queues, interrupt)``:
the guest memory, the validated queues and an ``Interrupt`` to signal the driver. Kicks arrive
as ``handle_kick(i)`` on the device's event loop. Everything the guest controls is checked, and
``handle_kick``/``guarded`` turn any failure a hostile guest can provoke into DEVICE_NEEDS_RESET
(``Interrupt.fail``), never into an exception in the engine.

Threading: MMIO register accesses run on vCPU threads, queue work on the device's event loop
(the main loop or an iothread). ``self.lock`` serialises the two, so a reset from a vCPU never
races a request in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from engine.errors import GuestMemoryError
from engine.machine.memory import GuestMemory
from engine.virtio.queue import ChainError, Queue, QueueError

if TYPE_CHECKING:
    from engine.machine.chardev_out import Timer

log = logging.getLogger(__name__)

# Device ids (virtio 1.2 §5).
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5
VIRTIO_ID_VSOCK = 19

# Transport-level feature bits (§6).
VIRTIO_F_RING_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32


def bit(n: int) -> int:
    return 1 << n


class Interrupt(Protocol):
    """How a device reaches its driver (implemented by the transport)."""

    def signal_used(self, queue_index: int) -> None:
        """Used buffers were added to queue ``queue_index``."""

    def signal_config(self) -> None:
        """The config space changed (bumps the config generation)."""

    def fail(self, reason: str) -> None:
        """The driver broke the protocol: set DEVICE_NEEDS_RESET and raise a config interrupt."""


class Loop(Protocol):
    """The part of ``engine.eventloop.EventLoop`` devices use."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


@dataclass
class DeviceStats:
    """Counters for the TUI and QMP: one per device, updated on the device's loop."""

    requests: int = 0
    bytes_in: int = 0  # guest → host (disk writes, TX, console output)
    bytes_out: int = 0  # host → guest (disk reads, RX, entropy)
    errors: int = 0
    throttled_s: float = 0.0
    interrupts: int = 0

    def snapshot(self) -> dict[str, float]:
        return asdict(self)


class VirtioDevice:
    """Base of every device. Subclasses set ``device_id`` and override the ``on_*`` hooks."""

    device_id: int = 0
    #: Queues served by a vhost kernel back end: their kicks and interrupts bypass Python.
    kernel_queues: frozenset[int] = frozenset()
    #: The dataclass ``snapshot_state`` returns (None: the transport's state is all there is).
    state_type: ClassVar[type | None] = None

    def __init__(
        self,
        name: str,
        queue_sizes: Sequence[int],
        features: int,
        *,
        loop: Loop | None = None,
    ) -> None:
        self.name = name
        self.queue_max_sizes = tuple(queue_sizes)
        self.avail_features = features
        self.acked_features = 0
        self.config = bytearray()
        self.loop = loop
        self.lock = threading.RLock()
        self.stats = DeviceStats()
        self.mem: GuestMemory | None = None
        self.queues: list[Queue] = []
        self.interrupt: Interrupt | None = None
        self.broken = False
        #: While a snapshot is taken or restored the device touches no guest memory (``freeze``).
        self.frozen = False

    # -- what the transport calls -------------------------------------------------------------

    @property
    def num_queues(self) -> int:
        return len(self.queue_max_sizes)

    @property
    def active(self) -> bool:
        return self.mem is not None

    def has_feature(self, n: int) -> bool:
        return bool(self.acked_features >> n & 1)

    def read_config(self, offset: int, size: int) -> bytes:
        """Config bytes ``[offset, offset+size)``; bytes past the end read as zero."""
        data = bytes(self.config[offset : offset + size])
        return data + bytes(size - len(data))

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write to config space; read-only by default (writes ignored)."""
        log.debug("%s: ignoring config write at %#x", self.name, offset)

    def features_ok(self, acked: int) -> str | None:
        """Why a driver's feature set is unacceptable, or None (checked at FEATURES_OK)."""
        return None

    def activate(self, mem: GuestMemory, queues: list[Queue], interrupt: Interrupt) -> None:
        """Start serving the queues. Raises (any exception) when the device cannot start."""
        with self.lock:
            self.mem = mem
            self.queues = queues
            self.interrupt = interrupt
            self.broken = False
            try:
                self.on_activate()
            except BaseException:
                self.mem = None
                raise

    def reset(self) -> None:
        """Stop using guest memory and forget the driver's state (status 0 written)."""
        with self.lock:
            if self.mem is not None:
                try:
                    self.on_reset()
                except Exception:
                    log.exception("%s: reset hook failed", self.name)
            self.mem = None
            self.queues = []
            self.interrupt = None
            self.acked_features = 0
            self.broken = False

    def handle_kick(self, index: int) -> None:
        """The driver notified queue ``index``: process it, turning guest faults into NEEDS_RESET."""
        self.guarded(self.process_queue, index)

    def guarded(self, fn: Callable[..., None], *args: object) -> None:
        """Run queue work under the device lock; a guest-provoked failure breaks only this device."""
        with self.lock:
            if self.mem is None or self.broken or self.frozen:
                return
            try:
                fn(*args)
            except (QueueError, ChainError, GuestMemoryError) as e:
                self.stats.errors += 1
                self._break(str(e))
            except Exception as e:  # a device bug: contain it to the device
                log.exception("%s: queue processing failed", self.name)
                self.stats.errors += 1
                self._break(f"internal error: {e!r}")

    def _break(self, reason: str) -> None:
        log.warning("%s: device needs reset: %s", self.name, reason)
        self.broken = True
        if self.interrupt is not None:
            self.interrupt.fail(reason)

    def signal(self, index: int) -> None:
        """Interrupt the driver for queue ``index`` if it wants one (EVENT_IDX / NO_INTERRUPT)."""
        q = self.queues[index]
        if q.needs_notification() and self.interrupt is not None:
            self.stats.interrupts += 1
            self.interrupt.signal_used(index)

    def on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the device's loop thread (inline when there is no loop, as in unit tests)."""
        if self.loop is None:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    # -- snapshot and restore (engine/snapshot/; on the device's loop thread) ----------------------

    def freeze(self) -> None:
        """Stop touching guest memory and the rings until ``thaw``: a snapshot is being taken
        (or applied). Queue work that arrives meanwhile is skipped, not lost: ``thaw`` looks at
        every queue once."""
        with self.lock:
            self.frozen = True
            if self.mem is not None:
                self.on_freeze()

    def thaw(self) -> None:
        """Serve the device again, looking at every queue once (kicks while frozen were skipped)."""
        with self.lock:
            self.frozen = False
            if self.mem is None:
                return
            self.on_thaw()
            for i in range(len(self.queues)):
                if i not in self.kernel_queues:
                    self.guarded(self.process_queue, i)

    def snapshot_state(self) -> Any:
        """The device's own state beyond the transport's (a ``state_type``), or None."""
        return None

    def restore_state(self, state: Any) -> None:
        """Put back what ``snapshot_state`` gave (called after activation, while frozen)."""

    def on_freeze(self) -> None:
        """Hook: stop host-side sources of work (tap polling, vhost rings). Lock held."""

    def on_thaw(self) -> None:
        """Hook: undo ``on_freeze``. Lock held; ``thaw`` then processes every queue."""

    # -- what subclasses implement ---------------------------------------------------------------

    def on_activate(self) -> None:
        """Hook: register fds with the loop, open backends. Called with the lock held."""

    def on_reset(self) -> None:
        """Hook: unregister fds, drop in-flight state. Called with the lock held."""

    def process_queue(self, index: int) -> None:
        """Hook: serve queue ``index``. Called with the lock held; may raise guest faults."""

    def close(self) -> None:
        """Release host resources (files, taps) when the VM stops."""

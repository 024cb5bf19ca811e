"""virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): registers, status machine, interrupts.

Contract with the machine's device manager (``engine/machine/``), which alone knows addresses,
GSIs and KVM:

- ``t = MmioTransport(device, mem)``; the window is ``VIRTIO_MMIO_SIZE`` (0x200) bytes at the
  plan's ``mmio_base``; MMIO exits inside it call ``t.read(offset, size) -> int`` and
  ``t.write(offset, size, value)`` from vCPU threads. Registers below 0x100 are 32-bit only
  (other widths read 0 / are ignored, as in Firecracker); config space at 0x100+ takes 1, 2, 4
  or 8 bytes.
- Kicks: for each queue ``i`` register ``KVM_IOEVENTFD{addr=base+0x50, len=4, datamatch=i,
  fd=t.queue_eventfd(i)}``. Unless ``t.kernel_kick(i)`` (vhost: the kernel reads the eventfd),
  add ``t.queue_eventfd(i)`` as a reader on the device's loop (``device.loop``) with callback
  ``lambda: t.on_queue_event(i)``, which drains the eventfd and calls ``t.notify(i)``. A guest
  write to QueueNotify that does reach userspace (no ioeventfd) is handled the same way.
- Interrupts: ``t.set_interrupt(irqfd)`` with the eventfd registered as ``KVM_IRQFD`` on the
  device's GSI (edge-triggered, no resample), or any callable (tests). The transport sets
  InterruptStatus bit 0 (used ring) or bit 1 (config), then writes 1 to the eventfd; the
  driver reads InterruptStatus and writes InterruptACK. For vhost devices the kernel writes the
  irqfd itself, so InterruptStatus always reports bit 0 for them.
- Acks: the manager may also register ``KVM_IOEVENTFD{addr=base+0x64, len=4, datamatch=1,
  fd=t.ack_eventfd()}``: the driver's InterruptACK of a used-ring interrupt (value 1, the one
  every request ends with) then completes in the kernel instead of exiting to a vCPU thread in
  Python. Nothing reads that eventfd; since such an ack never clears bit 0, InterruptStatus
  reports bit 0 whenever DRIVER_OK is set (as for vhost devices): at worst the driver looks at
  a ring with nothing new. Acks with bit 1 (config) still exit and clear what they name.
- ``t.close()`` at VM stop closes the eventfds and the device's backend.

Status machine (Firecracker's table): ``0 → ACK → ACK|DRIVER → |FEATURES_OK → |DRIVER_OK``;
FAILED is OR-ed in at any time; 0 resets. FEATURES_OK sticks only when VIRTIO_F_VERSION_1 was
accepted and the device agrees to the feature set. At DRIVER_OK the ready queues are validated
and the device is activated; any failure, and any later protocol violation the device reports,
sets DEVICE_NEEDS_RESET and raises a config interrupt instead of raising into the engine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from functools import partial

from engine.machine.memory import GuestMemory
from engine.virtio.device import (
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
)
from engine.virtio.queue import Queue, QueueError

log = logging.getLogger(__name__)

MMIO_MAGIC = 0x74726976  # "virt"
MMIO_VERSION = 2
VENDOR_ID = 0x4C56_5653  # "SVVL"

STATUS_ACKNOWLEDGE = 0x01
STATUS_DRIVER = 0x02
STATUS_DRIVER_OK = 0x04
STATUS_FEATURES_OK = 0x08
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

INT_VRING = 0x1
INT_CONFIG = 0x2

_A, _D, _F, _K = STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_DRIVER_OK
#: The only status changes a driver may make (besides 0 = reset and OR-ing FAILED).
VALID_TRANSITIONS = frozenset(
    {(0, _A), (_A, _A | _D), (_A | _D, _A | _D | _F), (_A | _D | _F, _A | _D | _F | _K)}
)

# Register offsets.
MAGIC, VERSION, DEVICE_ID, VENDOR = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY = 0x030, 0x034, 0x038, 0x044, 0x050
INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_LEN_LOW, SHM_LEN_HIGH = 0x0B0, 0x0B4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100
WINDOW_SIZE = 0x200

_QUEUE_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc_addr", 0),
    QUEUE_DESC_HIGH: ("desc_addr", 32),
    QUEUE_DRIVER_LOW: ("avail_addr", 0),
    QUEUE_DRIVER_HIGH: ("avail_addr", 32),
    QUEUE_DEVICE_LOW: ("used_addr", 0),
    QUEUE_DEVICE_HIGH: ("used_addr", 32),
}


class _TransportInterrupt:
    """The ``Interrupt`` a device gets at activation."""

    def __init__(self, transport: MmioTransport) -> None:
        self._t = transport

    @property
    def irqfd(self) -> int | None:
        """The irqfd eventfd (vhost uses it as the vring call fd), if one was set."""
        return self._t.irqfd

    def signal_used(self, queue_index: int) -> None:
        self._t.raise_interrupt(INT_VRING)

    def signal_config(self) -> None:
        self._t.config_generation = (self._t.config_generation + 1) & 0xFFFFFFFF
        self._t.raise_interrupt(INT_CONFIG)

    def fail(self, reason: str) -> None:
        self._t.needs_reset(reason)


class MmioTransport:
    """One virtio-mmio window in front of one ``VirtioDevice``."""

    def __init__(self, device: VirtioDevice, mem: GuestMemory) -> None:
        self.device = device
        self.mem = mem
        self.queues = [Queue(n) for n in device.queue_max_sizes]
        self._eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        for q, fd in zip(self.queues, self._eventfds, strict=True):
            q.kick_fd = fd
        self._isr = 0
        self._isr_lock = threading.Lock()
        self._irq: Callable[[], None] | None = None
        self.irqfd: int | None = None
        self._ack_fd: int | None = None
        self.config_generation = 0
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        with self._isr_lock:
            self._isr = 0

    # -- identity ----------------------------------------------------------------------------------

    @property
    def num_queues(self) -> int:
        return len(self.queues)

    @property
    def kernel_kicks(self) -> bool:
        """True when any queue is served by vhost (prefer the per-queue ``kernel_kick(i)``)."""
        return bool(self.device.kernel_queues)

    def kernel_kick(self, index: int) -> bool:
        """True for vhost queues: the kernel consumes that queue's eventfd (and writes the irqfd)."""
        return index in self.device.kernel_queues

    @property
    def offered_features(self) -> int:
        ring = getattr(
            self.device,
            "ring_features",
            1 << VIRTIO_F_RING_INDIRECT_DESC | 1 << VIRTIO_F_RING_EVENT_IDX,
        )
        return self.device.avail_features | ring | 1 << VIRTIO_F_VERSION_1

    # -- interrupts --------------------------------------------------------------------------------

    def set_interrupt(self, target: int | Callable[[], None]) -> None:
        """An irqfd eventfd (write 1 = edge on the GSI) or a callable that raises the interrupt."""
        if isinstance(target, int):
            fd = target
            self.irqfd = fd
            self._irq = lambda: os.eventfd_write(fd, 1)
        else:
            self.irqfd = None
            self._irq = target

    def raise_interrupt(self, bits: int) -> None:
        with self._isr_lock:
            self._isr |= bits
        if self._irq is not None:
            try:
                self._irq()
            except OSError as e:
                log.error("%s: cannot raise interrupt: %s", self.device.name, e)

    def needs_reset(self, reason: str) -> None:
        """A protocol violation: DEVICE_NEEDS_RESET plus a config interrupt (§2.1.2)."""
        log.warning("%s: DEVICE_NEEDS_RESET: %s", self.device.name, reason)
        if self.status & STATUS_DRIVER_OK or self.status & STATUS_FEATURES_OK:
            self.status |= STATUS_DEVICE_NEEDS_RESET
            self.raise_interrupt(INT_CONFIG)
        else:
            self.status |= STATUS_DEVICE_NEEDS_RESET

    def ack_eventfd(self) -> int:
        """The eventfd to register as KVM_IOEVENTFD (base+0x64, datamatch=1): see the module doc."""
        if self._ack_fd is None:
            self._ack_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return self._ack_fd

    @property
    def interrupt_status(self) -> int:
        isr = self._isr  # one int read: the lock only guards read-modify-writes
        if (self._ack_fd is not None or self.device.kernel_queues) and (
            self.status & STATUS_DRIVER_OK
        ):
            isr |= INT_VRING
        return isr

    # -- kicks -------------------------------------------------------------------------------------

    def queue_eventfd(self, index: int) -> int:
        """The eventfd to register as KVM_IOEVENTFD (datamatch=index) for queue ``index``."""
        return self._eventfds[index]

    def on_queue_event(self, index: int) -> None:
        """Loop callback for ``queue_eventfd(index)``: drain it, then ``notify(index)``."""
        try:
            os.eventfd_read(self._eventfds[index])
        except BlockingIOError:
            return
        self.notify(index)

    def notify(self, queue_index: int) -> None:
        """The driver kicked ``queue_index`` (from the device's loop). Never raises."""
        if not 0 <= queue_index < len(self.queues):
            log.debug("%s: notify for missing queue %d", self.device.name, queue_index)
            return
        if self.kernel_kick(queue_index):
            os.eventfd_write(self._eventfds[queue_index], 1)
            return
        if self.status & STATUS_DRIVER_OK and not self.status & STATUS_DEVICE_NEEDS_RESET:
            self.device.handle_kick(queue_index)

    # -- register access ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest MMIO read of ``size`` bytes at ``offset`` in the window."""
        if offset == INTERRUPT_STATUS:  # every interrupt reads it: tested first
            return self.interrupt_status if size == 4 else 0
        if offset >= CONFIG:
            if size not in (1, 2, 4, 8) or offset + size > WINDOW_SIZE:
                return 0
            with self.device.lock:
                data = self.device.read_config(offset - CONFIG, size)
            return int.from_bytes(data, "little")
        if size != 4:
            return 0
        with self.device.lock:
            return self._read_reg(offset)

    def _read_reg(self, offset: int) -> int:
        q = self._selected_queue()
        if offset == MAGIC:
            return MMIO_MAGIC
        if offset == VERSION:
            return MMIO_VERSION
        if offset == DEVICE_ID:
            return self.device.device_id
        if offset == VENDOR:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            page = self.device_features_sel
            return (self.offered_features >> (32 * page)) & 0xFFFFFFFF if page < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return q.max_size if q is not None else 0
        if offset == QUEUE_READY:
            return int(q.ready) if q is not None else 0
        if offset == STATUS:
            return self.status
        if offset == CONFIG_GENERATION:
            return self.config_generation
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH):
            return 0xFFFFFFFF  # no shared memory regions (§4.2.2: length -1 = absent)
        if offset in _QUEUE_ADDR_REGS and q is not None:
            attr, shift = _QUEUE_ADDR_REGS[offset]
            return (getattr(q, attr) >> shift) & 0xFFFFFFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest MMIO write of ``size`` bytes at ``offset``. Never raises."""
        if offset >= CONFIG:
            if size not in (1, 2, 4, 8) or offset + size > WINDOW_SIZE:
                return
            with self.device.lock:
                if self.status & STATUS_DRIVER and not self.status & STATUS_FAILED:
                    data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                    self.device.write_config(offset - CONFIG, data)
            return
        if size != 4:
            return
        value &= 0xFFFFFFFF
        if offset == QUEUE_NOTIFY:
            dev = self.device
            dev.on_loop(lambda: self.notify(value))
            return
        if offset == INTERRUPT_ACK:
            with self._isr_lock:
                self._isr &= ~value
            return
        with self.device.lock:
            self._write_reg(offset, value)

    def _write_reg(self, offset: int, value: int) -> None:
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == STATUS:
            self._write_status(value)
        elif offset in (QUEUE_NUM, QUEUE_READY) or offset in _QUEUE_ADDR_REGS:
            self._write_queue_reg(offset, value)
        else:
            log.debug("%s: write to unknown register %#x", self.device.name, offset)

    def _selected_queue(self) -> Queue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _write_driver_features(self, value: int) -> None:
        s = self.status
        if not s & STATUS_DRIVER or s & (
            STATUS_FEATURES_OK | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET
        ):
            log.warning("%s: driver features written in status %#x", self.device.name, s)
            return
        page = self.driver_features_sel
        if page > 1:
            return
        shift = 32 * page
        offered = (self.offered_features >> shift) & 0xFFFFFFFF
        keep = self.driver_features & ~(0xFFFFFFFF << shift)
        self.driver_features = keep | (value & offered) << shift

    def _write_queue_reg(self, offset: int, value: int) -> None:
        q = self._selected_queue()
        if q is None:
            return
        if (
            self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)
            != STATUS_FEATURES_OK
        ):
            log.warning(
                "%s: queue register %#x written in status %#x",
                self.device.name,
                offset,
                self.status,
            )
            return
        if offset == QUEUE_READY:
            if value == 1 and not q.ready:
                reason = q.validate(self.mem)
                if reason is not None:
                    self.needs_reset(f"queue {self.queue_sel}: {reason}")
                    return
                q.ready = True
            elif value == 0:
                q.ready = False
            return
        if q.ready:
            log.warning("%s: queue %d reconfigured while ready", self.device.name, self.queue_sel)
            return
        if offset == QUEUE_NUM:
            q.size = value
        else:
            attr, shift = _QUEUE_ADDR_REGS[offset]
            old = getattr(q, attr)
            setattr(q, attr, (old & ~(0xFFFFFFFF << shift)) | value << shift)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        old = self.status & ~STATUS_DEVICE_NEEDS_RESET
        if value & STATUS_FAILED:
            self.status |= STATUS_FAILED
            return
        new = value & ~STATUS_DEVICE_NEEDS_RESET
        if (old, new) not in VALID_TRANSITIONS:
            log.warning("%s: invalid status change %#x -> %#x", self.device.name, old, value)
            return
        if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
            reason = self._check_features()
            if reason is not None:
                log.warning("%s: features refused: %s", self.device.name, reason)
                return  # FEATURES_OK does not stick: the driver reads it back and gives up
            self.device.acked_features = self.driver_features
        self.status = new | (self.status & STATUS_DEVICE_NEEDS_RESET)
        if new & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self._activate()

    def _check_features(self) -> str | None:
        if not self.driver_features >> VIRTIO_F_VERSION_1 & 1:
            return "VIRTIO_F_VERSION_1 not accepted (legacy drivers are not supported)"
        return self.device.features_ok(self.driver_features)

    def _activate(self) -> None:
        acked = self.driver_features
        event_idx = bool(acked >> VIRTIO_F_RING_EVENT_IDX & 1)
        indirect = bool(acked >> VIRTIO_F_RING_INDIRECT_DESC & 1)
        try:
            for i, q in enumerate(self.queues):
                if q.ready:
                    try:
                        q.activate(self.mem, event_idx=event_idx, indirect=indirect)
                    except QueueError as e:
                        raise QueueError(f"queue {i}: {e}") from None
            self.device.activate(self.mem, self.queues, _TransportInterrupt(self))
        except Exception as e:
            for q in self.queues:
                q.deactivate()
            self.needs_reset(f"activation failed: {e}")
            return
        # Kicks that came before DRIVER_OK were dropped: look at every ready queue once.
        for i, q in enumerate(self.queues):
            if q.ready and not self.kernel_kick(i):
                self.device.on_loop(partial(self.notify, i))

    def reset(self) -> None:
        """Device reset (status 0): the device forgets the driver; generation stays monotonic."""
        with self.device.lock:
            self.device.reset()
            for q in self.queues:
                q.reset()
            self._reset_registers()

    def close(self) -> None:
        """At VM stop: reset, close the queue eventfds and the device's host resources."""
        self.reset()
        self.device.close()
        for fd in [*self._eventfds, *([self._ack_fd] if self._ack_fd is not None else [])]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._eventfds = []
        self._ack_fd = None

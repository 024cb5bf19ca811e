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

Here: the registers and the status machine (a vCPU's MMIO exit). The eventfds (kicks in,
interrupts out) are ``mmio_events.py``, a base class of ``MmioTransport``; the register map is
``mmio_regs.py``.
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
from engine.virtio.mmio_events import MmioEvents, TransportInterrupt
from engine.virtio.mmio_regs import (
    CONFIG,
    CONFIG_GENERATION,
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DEVICE_ID,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    INTERRUPT_ACK,
    INTERRUPT_STATUS,
    MAGIC,
    MMIO_MAGIC,
    MMIO_VERSION,
    QUEUE_ADDR_REGS,
    QUEUE_NOTIFY,
    QUEUE_NUM,
    QUEUE_NUM_MAX,
    QUEUE_READY,
    QUEUE_SEL,
    SHM_LEN_HIGH,
    SHM_LEN_LOW,
    STATUS,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_FEATURES_OK,
    VALID_TRANSITIONS,
    VENDOR,
    VENDOR_ID,
    VERSION,
    WINDOW_SIZE,
)
from engine.virtio.queue import Queue, QueueError

log = logging.getLogger(__name__)


class MmioTransport(MmioEvents):
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
    def offered_features(self) -> int:
        ring = getattr(
            self.device,
            "ring_features",
            1 << VIRTIO_F_RING_INDIRECT_DESC | 1 << VIRTIO_F_RING_EVENT_IDX,
        )
        return self.device.avail_features | ring | 1 << VIRTIO_F_VERSION_1

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
        if offset in QUEUE_ADDR_REGS and q is not None:
            attr, shift = QUEUE_ADDR_REGS[offset]
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
        elif offset in (QUEUE_NUM, QUEUE_READY) or offset in QUEUE_ADDR_REGS:
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
            attr, shift = QUEUE_ADDR_REGS[offset]
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
            self.device.activate(self.mem, self.queues, TransportInterrupt(self))
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

"""A virtio-mmio transport's eventfds: kicks in (the queue ioeventfds, drained on the device's
loop, then ``notify``) and interrupts out (InterruptStatus bits, the irqfd or a callable, the
ack eventfd), and the ``Interrupt`` a device gets at activation.

Split from ``mmio.py`` (registers and the status machine) because these run on the device's
loop and the device threads, not on a vCPU's MMIO exit. ``MmioTransport`` inherits this class:
a kick or an interrupt calls the method itself, as before the split.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.virtio.device import VirtioDevice
from engine.virtio.mmio_regs import (
    INT_CONFIG,
    INT_VRING,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
)
from engine.virtio.queue import Queue

if TYPE_CHECKING:
    from engine.virtio.mmio import MmioTransport

log = logging.getLogger("engine.virtio.mmio")


class TransportInterrupt:
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


class MmioEvents:
    """Kicks and interrupts of ``MmioTransport``; the attributes are set by its ``__init__``."""

    device: VirtioDevice
    queues: list[Queue]
    status: int
    config_generation: int
    irqfd: int | None
    _eventfds: list[int]
    _isr: int
    _isr_lock: threading.Lock
    _irq: Callable[[], None] | None
    _ack_fd: int | None

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

    @property
    def kernel_kicks(self) -> bool:
        """True when any queue is served by vhost (prefer the per-queue ``kernel_kick(i)``)."""
        return bool(self.device.kernel_queues)

    def kernel_kick(self, index: int) -> bool:
        """True for vhost queues: the kernel consumes that queue's eventfd (and writes the irqfd)."""
        return index in self.device.kernel_queues

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

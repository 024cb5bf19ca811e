"""The device manager: the only code that places devices on buses and wires eventfds to KVM.

Legacy devices (COM1 UART, the ACPI PM port) go on the PIO bus; each virtio device gets an
``MmioTransport`` at its plan's ``mmio_base`` on the MMIO bus, one irqfd on its GSI and one
ioeventfd per queue (``base+0x50``, 4 bytes, datamatch = queue index), whose eventfd is polled
by the device's loop (the main loop, or the iothread the plan names). Devices never see KVM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.eventloop import EventLoop
from engine.machine.bus import Bus
from engine.machine.chardev import Chardev, open_chardev
from engine.machine.kvm import VmFd
from engine.machine.memory import GuestMemory
from engine.machine.power import PM_PORT, PowerDevice
from engine.machine.serial import Serial
from launcher.compile.layout import VIRTIO_MMIO_SIZE
from launcher.compile.plan import DevicePlan, SerialPlan
from launcher.errors import EngineError

log = logging.getLogger(__name__)

QUEUE_NOTIFY = 0x50
SERIAL_PORTS = 8


class _Locked:
    """A bus device behind a lock that other threads (chardev input) also take."""

    def __init__(self, dev: Serial, lock: threading.Lock) -> None:
        self.dev, self.lock = dev, lock

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            return self.dev.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self.dev.write(offset, size, value)


class DeviceError(EngineError):
    """A device could not be created or wired (names the device id)."""


@dataclass
class AttachedDevice:
    spec: DevicePlan
    transport: Any
    loop: EventLoop
    irqfd: int
    kick_fds: list[int] = field(default_factory=list)


class DeviceManager:
    def __init__(
        self,
        vm: VmFd,
        mem: GuestMemory,
        pio: Bus,
        mmio: Bus,
        main_loop: EventLoop,
        iothread_loops: dict[str, EventLoop] | None = None,
    ) -> None:
        self.vm = vm
        self.mem = mem
        self.pio = pio
        self.mmio = mmio
        self.main_loop = main_loop
        self.iothread_loops = iothread_loops or {}
        self.virtio: list[AttachedDevice] = []
        self.serial: Serial | None = None
        self.serial_chardev: Chardev | None = None
        self._fds: list[int] = []

    # -- legacy ---------------------------------------------------------------------------------

    def attach_serial(self, plan: SerialPlan) -> Serial:
        """COM1: an 8250 on ``plan.port`` whose interrupt is an irqfd on ``plan.irq``."""
        chardev = open_chardev(plan.chardev)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(efd)
        self.vm.register_irqfd(efd, plan.irq)
        loop = self.main_loop
        serial = Serial(
            chardev.write,
            lambda: os.eventfd_write(efd, 1),
            on_space=lambda: loop.call_soon_threadsafe(chardev.resume_input),
        )
        lock = threading.Lock()  # vCPU threads (registers) and the loop (input) share the UART

        def sink(data: bytes) -> int:
            with lock:
                return serial.enqueue(data)

        self.pio.insert(
            _Locked(serial, lock),
            plan.port,
            SERIAL_PORTS,
            f"serial ({plan.chardev.id})",
            serialize=False,
        )
        chardev.attach(loop, sink, serial.free_space)
        self.serial, self.serial_chardev = serial, chardev
        return serial

    def attach_power(self, on_reset: Callable[[], None], on_poweroff: Callable[[], None]) -> None:
        self.pio.insert(PowerDevice(on_reset, on_poweroff), PM_PORT, 1, "acpi-pm")

    # -- virtio ---------------------------------------------------------------------------------

    def loop_for(self, spec: DevicePlan) -> EventLoop:
        if spec.iothread is None:
            return self.main_loop
        loop = self.iothread_loops.get(spec.iothread)
        if loop is None:
            raise DeviceError(
                f"device {spec.id}: iothread {spec.iothread!r} is not defined",
                hint="add it to the manifest's iothreads",
            )
        return loop

    def attach_virtio(self, spec: DevicePlan, device: Any) -> AttachedDevice:
        """Put ``device`` behind a transport at ``spec.mmio_base`` and wire irqfd/ioeventfds."""
        from engine.virtio.mmio import MmioTransport

        loop = self.loop_for(spec)
        transport = MmioTransport(device, self.mem)
        self.mmio.insert(
            transport, spec.mmio_base, VIRTIO_MMIO_SIZE, f"virtio-{spec.kind} {spec.id}"
        )
        irqfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(irqfd)
        self.vm.register_irqfd(irqfd, spec.irq)
        transport.set_interrupt(irqfd)
        att = AttachedDevice(spec, transport, loop, irqfd)
        for q in range(transport.num_queues):
            kfd = transport.queue_eventfd(q)
            self.vm.register_ioeventfd(kfd, spec.mmio_base + QUEUE_NOTIFY, 4, datamatch=q)
            att.kick_fds.append(kfd)
            if not transport.kernel_kick(q):
                loop.add_reader(kfd, lambda q=q, t=transport: t.on_queue_event(q))
        self.virtio.append(att)
        log.debug("virtio-%s %s at %#x irq %d", spec.kind, spec.id, spec.mmio_base, spec.irq)
        return att

    def close(self) -> None:
        for att in self.virtio:
            for kfd in att.kick_fds:
                att.loop.remove_reader(kfd)
            with contextlib.suppress(Exception):
                att.transport.close()
        if self.serial_chardev is not None:
            self.serial_chardev.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

"""The device manager: the only code that places devices on buses and wires eventfds to KVM.

Legacy devices (COM1 UART, the ACPI PM port, the power button's GED with an irqfd on its GSI,
the pvpanic port) go on the PIO bus; each virtio device gets an ``MmioTransport`` at its plan's ``mmio_base`` on
the MMIO bus, one irqfd on its GSI and one ioeventfd per queue (``base+0x50``, 4 bytes,
datamatch = queue index), whose eventfd is polled by the device's loop (the main loop, or the
iothread the plan names). Devices never see KVM.

Chardevs are opened once, here, by id (``chardev()``), and handed to the UART and to virtio
consoles; the manager closes them. ``replace_virtio`` swaps the device behind one window (QMP
hot-replace into a ``SlotPlan``'s empty transport and back): same MMIO range and GSI, the old
queue ioeventfds deassigned and the new ones assigned, all on the device loop's thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.eventloop import EventLoop
from engine.logsetup import get_logger
from engine.machine.bus import Bus
from engine.machine.chardev import Chardev, open_chardev
from engine.machine.ged import GedDevice
from engine.machine.kvm import VcpuFd, VmFd
from engine.machine.layout import GED_IRQ, GED_PORT, GED_PORT_SIZE, VIRTIO_MMIO_SIZE
from engine.machine.memory import GuestMemory
from engine.machine.power import PM_PORT, PowerDevice
from engine.machine.serial import LSR, Serial
from engine.plan import ChardevPlan, DevicePlan, SerialPlan

if TYPE_CHECKING:
    from typing import Any

    from engine.machine.coalesced import CoalescedRing, UartCoalescing

log = get_logger(__name__)

QUEUE_NOTIFY = 0x50
INTERRUPT_ACK = 0x64
SERIAL_PORTS = 8


def run_on_loop(loop: EventLoop, fn: Callable[[], None], timeout: float = 5.0) -> None:
    """Run ``fn`` on ``loop``'s thread and wait for it (directly when that is this thread or the
    loop is not running). Exceptions come back to the caller."""
    if loop.thread_id is None or loop.thread_id == threading.get_ident():
        fn()
        return
    done = threading.Event()
    err: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as e:  # handed back to the waiting thread
            err.append(e)
        finally:
            done.set()

    loop.call_soon_threadsafe(call)
    if not done.wait(timeout):
        raise DeviceError(f"event loop {loop.name} did not answer within {timeout:g} s")
    if err:
        raise err[0]


class DeviceError(EngineError):
    """A device could not be created or wired (names the device id)."""


@dataclass(slots=True)
class AttachedDevice:
    spec: DevicePlan
    transport: Any
    loop: EventLoop
    irqfd: int
    kick_fds: list[int] = field(default_factory=list)
    ack_fd: int | None = None


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
        #: the lock vCPU threads and the chardev's input share with the UART (snapshot takes it)
        self.serial_lock = threading.Lock()
        self.serial_chardev: Chardev | None = None
        self.ged: GedDevice | None = None
        self.chardevs: dict[str, Chardev] = {}
        self._chardev_users: dict[str, str] = {}
        self._fds: list[int] = []
        self._serial_port = 0
        self.coalescing: UartCoalescing | None = None
        #: port -> lock-free one-byte read for the vCPU loop (``ExitContext.fast_reads``)
        self.fast_reads: dict[int, Callable[[], int]] = {}

    # -- chardevs -------------------------------------------------------------------------------

    def chardev(self, plan: ChardevPlan, user: str) -> Chardev:
        """The backend for ``plan.id``, opened on first use; one front end per chardev."""
        other = self._chardev_users.get(plan.id)
        if other is not None and other != user:
            raise DeviceError(
                f"chardev {plan.id} is used by both {other} and {user}",
                hint="give each serial/console its own chardev",
            )
        dev = self.chardevs.get(plan.id)
        if dev is None:
            dev = open_chardev(plan)
            self.chardevs[plan.id] = dev
        self._chardev_users[plan.id] = user
        return dev

    # -- legacy ---------------------------------------------------------------------------------

    def attach_serial(self, plan: SerialPlan) -> Serial:
        """COM1: an 8250 on ``plan.port`` whose interrupt is an irqfd on ``plan.irq``."""
        chardev = self.chardev(plan.chardev, "serial")
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(efd)
        self.vm.register_irqfd(efd, plan.irq)
        loop = self.main_loop
        serial = Serial(
            chardev.output,  # queued on the vCPU thread, written out in chunks on the loop
            lambda: os.eventfd_write(efd, 1),
            on_space=lambda: loop.call_soon_threadsafe(chardev.resume_input),
        )
        lock = self.serial_lock  # vCPU threads (registers) and the loop (input, room) share it

        def sink(data: bytes) -> int:
            with lock:
                return serial.enqueue(data)

        def room() -> None:
            with lock:
                serial.tx_room()

        chardev.notify_room(room)

        self.pio.insert(serial, plan.port, SERIAL_PORTS, f"serial ({plan.chardev.id})", lock=lock)
        chardev.attach(loop, sink, serial.free_space)
        self.serial, self.serial_chardev = serial, chardev
        self._serial_port = plan.port
        self.fast_reads[plan.port + LSR] = serial.lsr_unlocked  # read before every console byte
        return serial

    def coalesce_serial(self, vcpu: VcpuFd) -> CoalescedRing | None:
        """THR writes through KVM's coalesced ring while they cannot raise an interrupt
        (``engine.machine.coalesced``); the ring, or None where there is no serial or the host
        lacks coalesced PIO. ``vcpu``'s mapping holds the ring (any vCPU of the VM would do)."""
        from engine.machine import kvm_sys as k
        from engine.machine.coalesced import CoalescedRing, UartCoalescing

        kvm = self.vm.kvm
        offset = kvm.check_extension(k.KVM_CAP_COALESCED_MMIO)
        if self.serial is None or not offset or not kvm.check_extension(k.KVM_CAP_COALESCED_PIO):
            return None
        page = vcpu.page(offset)
        if page is None:
            return None
        serial, lock, thr = self.serial, self.serial_lock, self._serial_port

        def write_bytes(port: int, data: bytes) -> None:
            if port != thr:
                for value in data:
                    self.pio.write(port, 1, value)
                return
            with lock:
                serial.write_thr(data)

        ring = CoalescedRing(page, self.pio.write, write_bytes)
        self.coalescing = UartCoalescing(
            self.vm, self.serial, self._serial_port, ring, self.main_loop
        )
        return ring

    def drain_coalesced(self) -> None:
        """Apply the THR writes KVM queued (the vCPUs are parked: a pause is complete)."""
        if self.coalescing is not None:
            self.coalescing.ring.drain()

    def attach_power(self, on_reset: Callable[[], None], on_poweroff: Callable[[], None]) -> None:
        """The ACPI power devices: the FADT PM port (guest reset/poweroff) and the GED, whose
        power button the host presses (``self.ged``); both are always in the DSDT/FADT."""
        self.pio.insert(PowerDevice(on_reset, on_poweroff), PM_PORT, 1, "acpi-pm")
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(efd)
        self.vm.register_irqfd(efd, GED_IRQ)
        self.ged = GedDevice(lambda: os.eventfd_write(efd, 1))
        self.pio.insert(self.ged, GED_PORT, GED_PORT_SIZE, "acpi-ged", serialize=False)

    def attach_pvpanic(self, on_event: Callable[[bool], None]) -> None:
        """The pvpanic port (the DSDT lists it when the plan has a pvpanic device)."""
        from engine.machine.pvpanic import PVPANIC_PORT, PVPANIC_PORT_SIZE, PvpanicDevice

        self.pio.insert(PvpanicDevice(on_event), PVPANIC_PORT, PVPANIC_PORT_SIZE, "pvpanic")

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

    def create_virtio(self, spec: DevicePlan) -> Any:
        """The device model for ``spec`` (a ``SlotPlan`` gives the empty DeviceID-0 device)."""
        # Lazy (start-up time), and never caught: the factory is part of every engine build, so
        # an ImportError here is a broken install that must fail loudly, not a missing feature.
        from engine.virtio.factory import create_device

        chardevs = None
        chardev_plan = getattr(spec, "chardev", None)
        if chardev_plan is not None:
            chardevs = {chardev_plan.id: self.chardev(chardev_plan, f"virtio-console {spec.id}")}
        return create_device(
            spec,
            mem=self.mem,
            loop=self.loop_for(spec),
            chardevs=chardevs,
            memory_size=self.mem.total_size,
        )

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
        self._wire_kicks(att)
        self.virtio.append(att)
        log.debug("virtio-%s %s at %#x irq %d", spec.kind, spec.id, spec.mmio_base, spec.irq)
        return att

    def _wire_kicks(self, att: AttachedDevice) -> None:
        t, base = att.transport, att.spec.mmio_base
        for q in range(t.num_queues):
            kfd = t.queue_eventfd(q)
            self.vm.register_ioeventfd(kfd, base + QUEUE_NOTIFY, 4, datamatch=q)
            att.kick_fds.append(kfd)
            if not t.kernel_kick(q):
                att.loop.add_reader(kfd, partial(t.on_queue_event, q))
        if hasattr(t, "ack_eventfd"):  # used-ring acks end in the kernel (mmio.py's docstring)
            att.ack_fd = t.ack_eventfd()
            self.vm.register_ioeventfd(att.ack_fd, base + INTERRUPT_ACK, 4, datamatch=1)

    def _unwire_kicks(self, att: AttachedDevice) -> None:
        base = att.spec.mmio_base
        for q, kfd in enumerate(att.kick_fds):
            att.loop.remove_reader(kfd)
            with contextlib.suppress(Exception):
                self.vm.register_ioeventfd(kfd, base + QUEUE_NOTIFY, 4, datamatch=q, deassign=True)
        att.kick_fds.clear()
        if att.ack_fd is not None:
            with contextlib.suppress(Exception):
                self.vm.register_ioeventfd(
                    att.ack_fd, base + INTERRUPT_ACK, 4, datamatch=1, deassign=True
                )
            att.ack_fd = None

    def attached(self, device_id: str) -> AttachedDevice | None:
        for att in self.virtio:
            if att.spec.id == device_id:
                return att
        return None

    def replace_virtio(self, old: AttachedDevice, spec: DevicePlan, device: Any) -> AttachedDevice:
        """Put ``device`` (for ``spec``, same window and GSI as ``old``) in place of ``old``.

        Runs the rewiring on the device loop's thread so no kick callback of the old transport
        races its closing (a reused eventfd number must never reach a stale callback).
        """
        from engine.virtio.mmio import MmioTransport

        if (spec.mmio_base, spec.irq) != (old.spec.mmio_base, old.spec.irq):
            raise DeviceError(f"device {spec.id}: not the window of {old.spec.id}")
        new_loop = self.loop_for(spec)
        transport = MmioTransport(device, self.mem)
        transport.set_interrupt(old.irqfd)
        att = AttachedDevice(spec, transport, new_loop, old.irqfd)

        def unwire() -> None:
            self._unwire_kicks(old)

        def swap() -> None:
            self.mmio.replace(spec.mmio_base, transport, f"virtio-{spec.kind} {spec.id}")
            with contextlib.suppress(Exception):
                old.transport.close()
            self._wire_kicks(att)

        run_on_loop(old.loop, unwire)
        run_on_loop(new_loop, swap)
        self.virtio[self.virtio.index(old)] = att
        log.info("virtio-mmio %#x: %s -> %s", spec.mmio_base, old.spec.id, spec.id)
        return att

    def close(self) -> None:
        if self.coalescing is not None:  # the guest's last bytes, before the chardevs close
            self.coalescing.close()
            self.coalescing = None
        for att in self.virtio:
            for kfd in att.kick_fds:
                att.loop.remove_reader(kfd)
            with contextlib.suppress(Exception):
                att.transport.close()
        for chardev in self.chardevs.values():
            with contextlib.suppress(Exception):
                chardev.close()
        self.chardevs.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

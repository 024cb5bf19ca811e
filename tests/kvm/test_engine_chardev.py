"""Virtio consoles on their chardev backends, opened once by the engine's device manager."""

from __future__ import annotations

import dataclasses
import os

import pytest
from tiny_guest import HANG, make_plan, write_guest
from virtio_driver import Allocator, Driver

from engine.machine.devices import DeviceError
from engine.machine.layout import virtio_mmio_slot
from engine.plan import ChardevPlan, ConsolePlan
from engine.vm import Vm

pytestmark = pytest.mark.kvm
MiB = 1 << 20


def console_plan(tmp_path, chardev: ChardevPlan):
    base, irq = virtio_mmio_slot(0)
    plan = make_plan(write_guest(tmp_path, HANG), serial_file=tmp_path / "serial")
    con = ConsolePlan(id="con0", mmio_base=base, irq=irq, chardev=chardev)
    return dataclasses.replace(plan, chardevs=(chardev,), devices=(con,))


def test_console_output_reaches_its_chardev_through_the_kick_eventfd(tmp_path) -> None:
    out = tmp_path / "console.txt"
    plan = console_plan(tmp_path, ChardevPlan("cons", "file", str(out)))
    vm = Vm(plan)
    vm.start(paused=True)
    try:
        dm = vm.machine.devices
        att = dm.attached("con0")
        backend = dm.chardevs["cons"]
        assert att.transport.device.backend is backend
        assert att.transport.device.owns_backend is False  # the manager closes it
        drv = Driver(att.transport, vm.machine.mem, Allocator(0x200000, 0x400000))
        drv.start()
        drv.queues[1].add([b"hello from the console\n"], [])  # transmitq
        os.eventfd_write(att.kick_fds[1], 1)  # what KVM does on the guest's QueueNotify write
        for _ in range(50):
            vm.wait(0.02)
            if out.read_bytes():
                break
        assert out.read_bytes() == b"hello from the console\n"
    finally:
        vm.close()
    assert backend.out_fd is None, "the chardev is closed with the VM"


def test_a_chardev_has_one_front_end(tmp_path) -> None:
    plan = console_plan(tmp_path, ChardevPlan("serial0", "file", str(tmp_path / "c.txt")))
    with pytest.raises(DeviceError, match="chardev serial0 is used by both serial and"):
        Vm(plan).start(paused=True)

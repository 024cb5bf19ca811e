"""The GED device model: read-to-clear event bits, one interrupt per event, guest writes ignored,
and its place on a real VM's PIO bus (port and GSI from ``engine.machine.layout``)."""

from __future__ import annotations

import os

import pytest
from tiny_guest import HANG, make_plan, write_guest

from engine.machine import layout
from engine.machine.ged import EVENT_POWER_BUTTON, GedDevice


@pytest.fixture
def irq_fd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def interrupts(fd: int) -> int:
    """How many times the device raised its interrupt since the last call (eventfd counter)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_power_button_sets_bit0_and_raises_the_interrupt_once(irq_fd: int) -> None:
    ged = GedDevice(lambda: os.eventfd_write(irq_fd, 1))
    assert ged.read(0, 1) == 0 and interrupts(irq_fd) == 0
    ged.press_power_button()
    assert interrupts(irq_fd) == 1
    assert ged.pending == EVENT_POWER_BUTTON == 1


def test_status_is_read_to_clear(irq_fd: int) -> None:
    ged = GedDevice(lambda: os.eventfd_write(irq_fd, 1))
    ged.press_power_button()
    assert ged.read(0, 1) == EVENT_POWER_BUTTON
    assert ged.read(0, 1) == 0  # each event is seen once
    assert ged.pending == 0


def test_events_accumulate_until_read(irq_fd: int) -> None:
    ged = GedDevice(lambda: os.eventfd_write(irq_fd, 1))
    ged.press_power_button()
    ged.notify(0x04)
    ged.press_power_button()
    assert interrupts(irq_fd) == 3
    assert ged.events_raised == 3
    assert ged.read(0, 1) == 0x05


def test_guest_writes_cannot_make_or_clear_events(irq_fd: int) -> None:
    ged = GedDevice(lambda: os.eventfd_write(irq_fd, 1))
    ged.write(0, 1, 0xFF)
    assert ged.pending == 0 and interrupts(irq_fd) == 0
    ged.press_power_button()
    ged.write(0, 1, 0x00)
    assert ged.read(0, 1) == EVENT_POWER_BUTTON
    assert ged.read(1, 1) == 0  # beyond the register


@pytest.mark.parametrize("bits", [0, 0x100, -1])
def test_event_bits_must_fit_the_register(bits: int, irq_fd: int) -> None:
    ged = GedDevice(lambda: os.eventfd_write(irq_fd, 1))
    with pytest.raises(ValueError, match="8-bit"):
        ged.notify(bits)
    assert interrupts(irq_fd) == 0


@pytest.mark.kvm
def test_ged_is_on_the_pio_bus_of_a_real_vm(tmp_path) -> None:
    from engine.vm import Vm

    plan = make_plan(write_guest(tmp_path, HANG), serial_file=tmp_path / "s")
    vm = Vm(plan)
    vm.start(paused=True)
    try:
        m = vm.machine
        assert m is not None and m.devices.ged is not None
        names = {r.name: (r.base, r.length) for r in m.pio.ranges()}
        assert names["acpi-ged"] == (layout.GED_PORT, layout.GED_PORT_SIZE)
        assert m.pio.read(layout.GED_PORT, 1) == 0
        m.devices.ged.press_power_button()
        assert m.pio.read(layout.GED_PORT, 1) == EVENT_POWER_BUTTON  # what _EVT reads
        assert m.pio.read(layout.GED_PORT, 1) == 0
        assert m.pio.read(layout.GED_PORT, 2) == 0xFFFF  # 16-bit access: not the register
    finally:
        vm.close()

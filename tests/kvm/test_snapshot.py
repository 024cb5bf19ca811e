"""Snapshot and restore on the host's KVM with tiny guests (docs/snapshot.md).

A VM is snapshotted while its guest is mid-work (a vCPU polling the power button, virtio
requests posted and not yet kicked), torn down, and a new VM is built from the files: the
guest must go on exactly where it was, through the restored vCPU, irqchip, UART, GED and every
virtio device's transport, queues and own state.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import threading
import time
from pathlib import Path

import pytest
from tiny_guest import HANG, make_plan, poweroff, say, wait_for_power_button, write_guest
from virtio_driver import Allocator, Driver

from engine.machine.devices import run_on_loop
from engine.machine.layout import virtio_mmio_slot
from engine.plan import BlkPlan, ChardevPlan, ConsolePlan, Plan, RngPlan, SlotPlan
from engine.snapshot.format import MEMORY_FILE, STATE_FILE
from engine.virtio import blk_spec as BS
from engine.vm import Vm

pytestmark = pytest.mark.kvm
MiB = 1 << 20


def button_guest(tmp: Path) -> Path:
    """Says "a", polls the GED until the power button is pressed, says "b", powers off."""
    return write_guest(tmp, say(b"a") + wait_for_power_button() + say(b"b") + poweroff())


def wait_until(cond, timeout: float = 10.0, vm: Vm | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        if vm is not None:
            vm.wait(0.01)
        else:
            time.sleep(0.01)


def snapshot(vm: Vm, folder: Path, *, loop_thread: bool = False) -> dict:
    """QMP migrate's path in process: the VM paused, the files written, the devices thawed.
    ``loop_thread``: the VM's main loop runs on a thread of the test (migrate is called there,
    as the QMP server would)."""
    if loop_thread:
        run_on_loop(vm.machine.loop, lambda: vm.migrate(f"file:{folder}"))
        wait_until(lambda: vm.query_migrate()["status"] != "active", 60)
        time.sleep(0.05)  # the loop runs the devices' thaw
    else:
        vm.migrate(f"file:{folder}")
        wait_until(lambda: vm.query_migrate()["status"] != "active", 60, vm)
        vm.wait(0.05)
    return vm.query_migrate()


def restored(plan: Plan, folder: Path, **changes) -> Plan:
    return dataclasses.replace(plan, incoming=f"file:{folder}", **changes)


def with_serial(plan: Plan, path: Path) -> Plan:
    assert plan.serial is not None
    ch = dataclasses.replace(plan.serial.chardev, path=str(path))
    return dataclasses.replace(plan, serial=dataclasses.replace(plan.serial, chardev=ch))


@pytest.mark.parametrize("cpus", [1, 2])
def test_the_guest_goes_on_where_it_was_snapshotted(tmp_path: Path, cpus: int) -> None:
    """vCPU registers (the poll loop's), the UART and the GED come back; the source VM can
    resume after its snapshot too."""
    out1, out2, folder = tmp_path / "s1", tmp_path / "s2", tmp_path / "snap"
    plan = make_plan(button_guest(tmp_path), cpus=cpus, serial_file=out1, memory=128 * MiB)
    vm = Vm(plan)
    vm.start()
    try:
        wait_until(lambda: out1.read_bytes() == b"a", vm=vm)  # the BSP (APs wait for SIPI)
        vm.pause()
        st = snapshot(vm, folder)
        assert st["status"] == "completed", st
        assert st["ram"]["total"] == st["ram"]["transferred"] == plan.memory.size
        assert sorted(os.listdir(folder)) == [MEMORY_FILE, STATE_FILE]
        vm.resume()  # the source goes on after its snapshot
        vm.powerdown()
        assert vm.wait(10) == 0 and "S5" in vm.stop_reason
    finally:
        vm.close()  # the UART queue is written out at close (docs/console.md, "Where the bytes go")
    assert out1.read_bytes() == b"ab"

    vm2 = Vm(with_serial(restored(plan, folder), out2))
    vm2.start()
    try:
        time.sleep(0.1)
        assert out2.read_bytes() == b""  # nothing is said again: the guest is past "a"
        vm2.powerdown()
        assert vm2.wait(10) == 0 and "S5" in vm2.stop_reason
    finally:
        vm2.close()
    assert out2.read_bytes() == b"b"


def test_a_snapshot_restores_many_times_and_its_files_never_change(tmp_path: Path) -> None:
    folder = tmp_path / "snap"
    plan = make_plan(button_guest(tmp_path), serial_file=tmp_path / "s0", memory=128 * MiB)
    vm = Vm(plan)
    vm.start()
    try:
        wait_until(lambda: (tmp_path / "s0").read_bytes() == b"a", vm=vm)
        vm.pause()
        assert snapshot(vm, folder)["status"] == "completed"
    finally:
        vm.close()
    before = {n: (folder / n).read_bytes() for n in (STATE_FILE, MEMORY_FILE)}
    for i in range(3):
        out = tmp_path / f"clone{i}"
        vm = Vm(with_serial(restored(plan, folder, name=f"clone{i}"), out))
        vm.start()
        try:
            vm.machine.mem.write(0x200000, b"clone %d" % i)  # the guest writes its RAM
            vm.powerdown()
            assert vm.wait(10) == 0
        finally:
            vm.close()
        assert out.read_bytes() == b"b"
    assert {n: (folder / n).read_bytes() for n in before} == before


def _device_plan(tmp_path: Path, disk: Path, console_out: Path) -> Plan:
    slots = [virtio_mmio_slot(i) for i in range(4)]
    chardev = ChardevPlan("cons", "socket", str(console_out), server=True, nowait=True)
    plan = make_plan(write_guest(tmp_path, HANG), serial_file=tmp_path / "serial")
    return dataclasses.replace(
        plan,
        chardevs=(chardev,),
        devices=(
            BlkPlan(id="disk0", mmio_base=slots[0][0], irq=slots[0][1], file=str(disk),
                    direct=False, aio="off", drive_id="drive0"),
            ConsolePlan(id="con0", mmio_base=slots[1][0], irq=slots[1][1], chardev=chardev),
            RngPlan(id="rng0", mmio_base=slots[2][0], irq=slots[2][1]),
            SlotPlan(id="slot0", mmio_base=slots[3][0], irq=slots[3][1], accepts="blk"),
        ),
    )  # fmt: skip


def _rehome(drivers: dict[str, Driver], vm: Vm) -> None:
    """The guest's drivers live in guest RAM; after a restore they talk to the new VM's
    transports (what a real guest does without noticing)."""
    atts = {a.spec.id: a for a in vm.machine.devices.virtio}
    for name, drv in drivers.items():
        drv.transport = atts[name].transport
        drv.mem = vm.machine.mem
        drv.transport.set_interrupt(drv._irq)
        for q in drv.queues.values():
            q.mem = vm.machine.mem


def test_every_virtio_device_kind_comes_back_with_its_queues(tmp_path: Path) -> None:
    """blk, console, rng and an empty slot: transports, ring positions, a request posted (and
    never kicked) before the snapshot, console input waiting in the device."""
    import socket

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    sock1, sock2, folder = tmp_path / "c1.sock", tmp_path / "c2.sock", tmp_path / "snap"
    plan = _device_plan(tmp_path, disk, sock1)
    hdr = struct.Struct("<IIQ")
    vm = Vm(plan)
    vm.start(paused=True)
    loop = threading.Thread(target=vm.machine.loop.run, daemon=True)
    loop.start()
    try:
        atts = {a.spec.id: a for a in vm.machine.devices.virtio}
        alloc = Allocator(32 * MiB, 48 * MiB)
        drivers = {
            n: Driver(atts[n].transport, vm.machine.mem, alloc) for n in ("disk0", "con0", "rng0")
        }
        for d in drivers.values():
            d.start()
        blk_q, rx_q, rng_q = (
            drivers["disk0"].queues[0],
            drivers["con0"].queues[0],
            drivers["rng0"].queues[0],
        )
        # one read served before the snapshot (used.idx 1) ...
        blk_q.add([hdr.pack(BS.VIRTIO_BLK_T_IN, 0, 1)], [512, 1])
        os.eventfd_write(atts["disk0"].kick_fds[0], 1)
        wait_until(lambda: blk_q.used_idx() == 1)
        first = blk_q.collect()
        assert first[0].data[:512] == bytes(range(256)) * 2
        # ... one posted but not kicked: the restored device must still serve it
        blk_q.add([hdr.pack(BS.VIRTIO_BLK_T_IN, 0, 2)], [512, 1])
        # console: the guest posts a receive buffer, the host sends a line that the device holds
        rx_q.add([], [64])
        os.eventfd_write(atts["con0"].kick_fds[0], 1)
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock1))
        c.sendall(b"one\n")
        wait_until(lambda: rx_q.used_idx() == 1)
        assert rx_q.collect()[0].data[:4] == b"one\n"
        rng_q.add([], [32])
        os.eventfd_write(atts["rng0"].kick_fds[0], 1)
        wait_until(lambda: rng_q.used_idx() == 1)
        rng_q.collect()
        st = snapshot(vm, folder, loop_thread=True)
        assert st["status"] == "completed", st
        c.close()
    finally:
        vm.machine.loop.stop()  # the loop's thread ends before its epoll is closed
        loop.join(5)
        vm.close()

    ch2 = dataclasses.replace(plan.chardevs[0], path=str(sock2))
    devices = tuple(
        dataclasses.replace(d, chardev=ch2) if isinstance(d, ConsolePlan) else d
        for d in plan.devices
    )
    vm2 = Vm(restored(plan, folder, name="back", chardevs=(ch2,), devices=devices))
    vm2.start(paused=True)
    loop2 = threading.Thread(target=vm2.machine.loop.run, daemon=True)
    loop2.start()
    try:
        _rehome(drivers, vm2)
        atts2 = {a.spec.id: a for a in vm2.machine.devices.virtio}
        for name in ("disk0", "con0", "rng0"):
            t = atts2[name].transport
            assert t.status & 0x4, f"{name} is DRIVER_OK again"
            assert t.device.active and not t.device.frozen
        assert atts2["slot0"].transport.device.device_id == 0
        # the request posted before the snapshot was served when the device thawed
        wait_until(lambda: blk_q.used_idx() == 2)
        assert blk_q.collect()[0].data[:512] == bytes(range(256)) * 2
        # and the rings go on: a new request, a new entropy read, new console input
        blk_q.add([hdr.pack(BS.VIRTIO_BLK_T_IN, 0, 3)], [512, 1])
        os.eventfd_write(atts2["disk0"].kick_fds[0], 1)
        wait_until(lambda: blk_q.used_idx() == 3)
        rng_q.add([], [32])
        os.eventfd_write(atts2["rng0"].kick_fds[0], 1)
        wait_until(lambda: rng_q.used_idx() == 2)
        assert len(rng_q.collect()[0].data) == 32
        rx_q.add([], [64])
        os.eventfd_write(atts2["con0"].kick_fds[0], 1)
        c2 = socket.socket(socket.AF_UNIX)
        c2.connect(str(sock2))
        c2.sendall(b"two\n")
        wait_until(lambda: rx_q.used_idx() == 2)
        assert rx_q.collect()[0].data[:4] == b"two\n"
        c2.close()
    finally:
        vm2.machine.loop.stop()
        loop2.join(5)
        vm2.close()

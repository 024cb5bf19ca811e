"""Whole VMs on the host's real /dev/kvm, running tiny guests of the tests' own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_guest import (
    HANG,
    LOCK_CMPXCHG16B_RSI,
    SAY_APIC_ID,
    UD2,
    hello_poweroff,
    make_plan,
    poweroff,
    reset,
    say,
    write_guest,
)
from vmrun import Events, run_vm

from engine.machine.cpuid_setup import is_pvm_host
from engine.vm import Vm
from launcher.errors import HostError

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[2]
GiB, MiB = 1 << 30, 1 << 20


@pytest.mark.parametrize("cpus", [1, 2, 4, 8])
def test_tiny_guest_powers_off(tmp_path, cpus: int) -> None:
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, hello_poweroff()), cpus=cpus, serial_file=out)
    vm, code, ev = run_vm(plan)
    assert code == 0
    assert out.read_bytes() == b"hello from the tiny guest\n"
    assert ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}) in ev.events
    assert "S5" in vm.stop_reason


@pytest.mark.parametrize(
    "layout",
    [
        {"memory": 64 * MiB},
        {"memory": 3 * GiB + 512 * MiB},  # crosses the 32-bit MMIO hole: two regions
        {"memory": 128 * MiB, "shared": True},
        {"memory": 64 * MiB, "prealloc": True, "dump_guest_core": False},
        {"node_sizes": [64 * MiB, 64 * MiB], "policy": "preferred"},
        {"memory": 64 * MiB, "mem_path": "DIR"},
        {"memory": 64 * MiB, "mem_path": "FILE", "shared": True},
    ],
    ids=["64M", "3.5G-hole", "shared", "prealloc", "numa", "mem-path-dir", "mem-path-file"],
)
def test_memory_layouts(tmp_path, layout: dict) -> None:
    if layout.get("mem_path") == "DIR":
        layout = {**layout, "mem_path": str(tmp_path)}
    elif layout.get("mem_path") == "FILE":
        layout = {**layout, "mem_path": str(tmp_path / "ram")}
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, hello_poweroff(b"ok\n")), serial_file=out, **layout)
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start(paused=True)
    try:
        m = vm.machine
        assert m is not None
        assert m.mem.total_size == plan.memory.size
        assert [(r.guest_addr, r.size) for r in m.mem.regions] == sorted(
            (r.guest_addr, r.size) for r in plan.memory.ranges
        )
        if plan.memory.size > 3 * GiB:
            assert m.mem.regions[-1].guest_addr == 4 * GiB
        vm.resume()
        assert vm.wait(20) == 0
    finally:
        vm.close()
    assert out.read_bytes() == b"ok\n"
    if layout.get("mem_path", "").endswith("ram"):
        assert os.path.getsize(tmp_path / "ram") == plan.memory.size


def test_start_paused_then_resume(tmp_path) -> None:
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, hello_poweroff(b"ran\n")), cpus=2, serial_file=out)
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start(paused=True)
    try:
        assert vm.status().value == "prelaunch"
        assert vm.wait(0.3) is None
        assert out.read_bytes() == b""
        assert len({c.thread_id for c in vm.query_cpus()}) == 2
        vm.resume()
        assert vm.wait(20) == 0
        assert ("RESUME", None) in ev.events
    finally:
        vm.close()
    assert out.read_bytes() == b"ran\n"


def test_pause_and_resume_a_running_guest(tmp_path) -> None:
    plan = make_plan(write_guest(tmp_path, say(b"x") + HANG), serial_file=tmp_path / "s")
    vm = Vm(plan, sink=Events())
    vm.start()
    try:
        time.sleep(0.1)
        vm.pause()
        assert vm.status().value == "paused"
        vm.resume()
        vm.quit()
        assert vm.wait(5) == 0
    finally:
        vm.close()


def test_qmp_system_reset_ends_a_microvm_with_shutdown(tmp_path) -> None:
    plan = make_plan(write_guest(tmp_path, say(b"x") + HANG), serial_file=tmp_path / "s")
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start()
    try:
        time.sleep(0.1)
        vm.reset()
        assert vm.wait(5) == 5  # engine.ending: host-qmp-system-reset
    finally:
        vm.close()
    reason = {"guest": False, "reason": "host-qmp-system-reset"}
    assert ev.events[-2:] == [("RESET", reason), ("SHUTDOWN", reason)]


def test_guest_reset_is_an_orderly_stop(tmp_path) -> None:
    plan = make_plan(write_guest(tmp_path, reset()), serial_file=tmp_path / "s")
    vm, code, ev = run_vm(plan)
    assert code == 4 and "reset" in vm.stop_reason  # a reboot is not a clean poweroff
    assert ev.events == [
        ("RESET", {"guest": True, "reason": "guest-reset"}),
        ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}),
    ]


def test_triple_fault_is_an_orderly_stop(tmp_path) -> None:
    plan = make_plan(write_guest(tmp_path, UD2), serial_file=tmp_path / "s")
    vm, code, ev = run_vm(plan)
    assert code == 6  # told apart from a reset (QEMU would say guest-reset)
    assert "triple fault" in vm.stop_reason
    assert ev.events == [("SHUTDOWN", {"guest": True, "reason": "guest-triple-fault"})]


def test_cpuid_reports_each_vcpus_apic_id(tmp_path) -> None:
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, SAY_APIC_ID + poweroff()), serial_file=out)
    _, code, _ = run_vm(plan)
    assert code == 0 and out.read_bytes() == b"0"


@pytest.mark.skipif(not is_pvm_host(), reason="PVM host only")
def test_pvm_emulation_failure_names_rip_and_bytes(tmp_path) -> None:
    plan = make_plan(
        write_guest(tmp_path, LOCK_CMPXCHG16B_RSI + poweroff()), serial_file=tmp_path / "s"
    )
    vm, code, _ = run_vm(plan)
    assert code == 1
    assert "emulation failure at RIP 0x100000" in vm.stop_reason
    assert "f0 48 0f c7 0e" in vm.stop_reason
    assert "scripts/rig" in vm.stop_reason


def test_too_many_vcpus_is_refused_before_the_vm(tmp_path) -> None:
    from engine.machine.kvm import Kvm

    kvm = Kvm()
    limit = kvm.max_vcpus
    kvm.close()
    plan = make_plan(write_guest(tmp_path, HANG), cpus=1)
    vcpus = tuple(plan.vcpus[0].__class__(i, i, 0, 0, 0, i, 0) for i in range(limit + 1))
    plan = dataclasses.replace(plan, vcpus=vcpus)
    with pytest.raises(HostError, match=f"allows {limit}"):
        Vm(plan).start(paused=True)


def test_engine_process_exits_0_on_poweroff(tmp_path) -> None:
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, hello_poweroff(b"proc\n")), serial_file=out)
    pf = tmp_path / "plan.json"
    pf.write_text(json.dumps(plan.to_json()))
    p = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--plan", str(pf)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b"proc\n"


def test_engine_process_bad_plan_is_one_clear_error(tmp_path) -> None:
    pf = tmp_path / "plan.json"
    pf.write_text('{"version": 99}')
    p = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--plan", str(pf)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "not a valid engine plan" in p.stderr and "Traceback" not in p.stderr


def test_virtio_device_is_wired_on_the_mmio_bus(tmp_path) -> None:
    from engine.machine.kvm import KvmError
    from engine.machine.layout import virtio_mmio_slot
    from engine.plan import RngPlan

    base, irq = virtio_mmio_slot(0)
    plan = make_plan(write_guest(tmp_path, HANG), serial_file=tmp_path / "s")
    plan = dataclasses.replace(plan, devices=(RngPlan(id="rng0", mmio_base=base, irq=irq),))
    vm = Vm(plan, sink=Events())
    vm.start(paused=True)
    try:
        m = vm.machine
        assert m is not None
        assert m.mmio.read(base, 4) == 0x74726976  # "virt"
        assert m.mmio.read(base + 4, 4) == 2 and m.mmio.read(base + 8, 4) == 4  # v2, rng
        att = m.devices.virtio[0]
        # the queue's ioeventfd is registered with KVM: a second identical one is refused
        with pytest.raises(KvmError, match="EEXIST"):
            m.vm.register_ioeventfd(att.kick_fds[0], base + 0x50, 4, datamatch=0)
    finally:
        vm.close()

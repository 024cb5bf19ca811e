"""The engine process under its seccomp filters (kill mode) with every thread role at work.

``python -m engine run`` with an iothread serving a virtio-blk disk, a tap virtio-net and an
rng, empty slots, and QMP: the test drives hot-replace (blockdev-add/device_add/device_del,
netdev_add on a tap + device_add/device_del), stats and quit over the wire, then checks that the
engine exited 0 (a missing syscall would be SIGSYS) and that every thread had a filter while it
ran. It is also the workload for ``scripts/measure-syscalls`` (the io role needs an iothread).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest
from tiny_guest import HANG, make_plan, say, write_guest

from engine.machine.layout import virtio_mmio_slot
from engine.plan import BlkPlan, NetPlan, RngPlan, SlotPlan

pytestmark = [pytest.mark.kvm, pytest.mark.root]
HAVE_TUN = os.path.exists("/dev/net/tun")


def engine_plan(tmp_path: Path, tap: str | None) -> tuple[Path, Path]:
    disk = tmp_path / "disk0.img"
    disk.write_bytes(b"\0" * (1 << 20))
    plan = make_plan(write_guest(tmp_path, say(b"r") + HANG), serial_file=tmp_path / "serial")
    devices: list = []
    base, irq = virtio_mmio_slot(0)
    devices.append(BlkPlan(id="disk0", mmio_base=base, irq=irq, file=str(disk), direct=False, iothread="io0"))  # fmt: skip
    for i in (1, 2, 3):
        base, irq = virtio_mmio_slot(i)
        devices.append(SlotPlan(id=f"blk-slot{i}", mmio_base=base, irq=irq, accepts="blk"))
    base, irq = virtio_mmio_slot(4)
    if tap:
        devices.append(NetPlan(id="net0", mmio_base=base, irq=irq, ifname=tap, iothread="io0"))
    else:
        devices.append(SlotPlan(id="net-slot0", mmio_base=base, irq=irq, accepts="net"))
    base, irq = virtio_mmio_slot(5)
    devices.append(SlotPlan(id="net-slot1", mmio_base=base, irq=irq, accepts="net"))
    base, irq = virtio_mmio_slot(6)
    devices.append(RngPlan(id="rng0", mmio_base=base, irq=irq, iothread="io0"))
    qmp = tmp_path / "qmp.sock"
    plan = dataclasses.replace(
        plan, devices=tuple(devices), iothreads=("io0",), qmp=(str(qmp),), seccomp=True
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.dumps())
    return plan_file, qmp


def seccomp_of_threads(pid: int) -> dict[str, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        out[f"{tid}:{st['Name']}"] = st["Seccomp"]
    return out


@pytest.mark.skipif(not HAVE_TUN, reason="no /dev/net/tun")
def test_every_role_runs_hot_replace_and_taps_under_kill_filters(tmp_path, monkeypatch) -> None:
    from qemu.qmp import QMPClient

    from engine.__main__ import engine_argv

    monkeypatch.setenv("SVLAUNCH_SECCOMP", os.environ.get("SVLAUNCH_SECCOMP", "kill"))
    tag = os.getpid() % 100000
    cold_tap, hot_tap = f"svsc{tag}", f"svsh{tag}"
    plan_file, qmp = engine_plan(tmp_path, cold_tap)
    hot = tmp_path / "hot.img"
    hot.write_bytes(b"\0" * 4096)
    proc = subprocess.Popen(
        engine_argv(str(plan_file)), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    filters: dict[str, str] = {}

    async def go() -> None:
        nonlocal filters
        end = time.monotonic() + 30
        while not qmp.exists():
            assert proc.poll() is None and time.monotonic() < end, "no QMP socket"
            await asyncio.sleep(0.02)
        q = QMPClient("seccomp-test")
        await q.connect(str(qmp))
        await q.execute("query-status")
        await asyncio.sleep(0.3)  # the iothread's install runs on its loop
        filters = seccomp_of_threads(proc.pid)
        await q.execute("blockdev-add", {"node-name": "hot0", "file": {"filename": str(hot)}})
        await q.execute("device_add", {"id": "hot0", "driver": "virtio-blk-device", "addr": "0x1"})
        await q.execute("netdev_add", {"id": "hn0", "type": "tap", "ifname": hot_tap})
        await q.execute(
            "device_add",
            {"id": "hn0", "driver": "virtio-net-device", "netdev": "hn0", "addr": "0x1"},
        )
        await q.execute("x-svlaunch-query-stats")
        with q.listener("DEVICE_DELETED") as listener:
            await q.execute("device_del", {"id": "hot0"})
            await asyncio.wait_for(listener.get(), 10)
        await q.execute("blockdev-del", {"node-name": "hot0"})
        with q.listener("DEVICE_DELETED") as listener:
            await q.execute("device_del", {"id": "hn0"})
            await asyncio.wait_for(listener.get(), 10)
        await q.execute("netdev_del", {"id": "hn0"})
        await q.execute("stop")
        await q.execute("cont")
        await q.execute("quit")
        with contextlib.suppress(EOFError):
            await q.disconnect()

    try:
        try:
            asyncio.run(asyncio.wait_for(go(), 60))
        except Exception as e:  # the engine died under us: say how (SIGSYS = -31)
            raise AssertionError(f"engine exit {proc.wait(15)} during QMP: {e!r}") from e
        code = proc.wait(15)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert code == 0, f"engine exit {code} (-31 is SIGSYS: a syscall missing)\n{err}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for name in (cold_tap, hot_tap):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)
    if os.environ.get("SVLAUNCH_SECCOMP") != "off":
        assert len(filters) >= 3, filters  # main, vcpu, io0 at least
        assert set(filters.values()) == {"2"}, filters  # every thread is filtered

"""The QMP server in the real engine process (host KVM), driven by qemu.qmp.

The guest is one of the tests' tiny guests: it prints a line on COM1 and halts, so the VM stays
up until QMP says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "support"
sys.path.insert(0, str(TESTS))

from tiny_guest import HANG, make_plan, say, write_guest  # noqa: E402

pytestmark = pytest.mark.kvm


def start_engine(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    import dataclasses

    kernel = write_guest(tmp_path, say(b"hello qmp\n") + HANG)
    serial = tmp_path / "serial.txt"
    qmp = tmp_path / "qmp.sock"
    plan = make_plan(kernel, cpus=2, serial_file=serial)
    plan = dataclasses.replace(plan, name="qmp-engine", qmp=(str(qmp),), paused=True)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.dumps())
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--plan", str(plan_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not qmp.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"engine did not serve QMP: {err.decode()[-2000:]}")
        time.sleep(0.05)
    return proc, qmp, serial


def test_engine_lifecycle_over_qmp(tmp_path: Path) -> None:
    proc, qmp, serial = start_engine(tmp_path)

    async def go() -> None:
        q = QMPClient("engine-test")
        await q.connect(str(qmp))
        assert (await q.execute("query-status"))["status"] in ("prelaunch", "paused")
        assert (await q.execute("query-name")) == {"name": "qmp-engine"}
        with q.listener(("RESUME", "STOP")) as listener:
            await q.execute("cont")
            assert (await asyncio.wait_for(listener.get(), 10))["event"] == "RESUME"
            deadline = time.monotonic() + 20
            while b"hello qmp" not in (serial.read_bytes() if serial.exists() else b""):
                assert time.monotonic() < deadline, "guest output never arrived"
                await asyncio.sleep(0.05)
            await q.execute("stop")
            assert (await asyncio.wait_for(listener.get(), 10))["event"] == "STOP"
        assert (await q.execute("query-status"))["status"] == "paused"
        cpus = await q.execute("query-cpus")
        assert [c["CPU"] for c in cpus] == [0, 1]
        assert all(c["thread_id"] > 0 for c in cpus)
        assert all(os.path.exists(f"/proc/{proc.pid}/task/{c['thread_id']}") for c in cpus)
        stats = await q.execute("x-svlaunch-query-stats")
        assert stats["uptime"] > 0 and len(stats["vcpu-exits"]) == 2
        with pytest.raises(ExecuteError) as err:
            await q.execute("query-balloon")
        assert err.value.error_class == "DeviceNotActive"
        with q.listener("SHUTDOWN") as listener:
            await q.execute("quit")
            ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        with contextlib.suppress(EOFError):  # the engine hangs up as it exits, as QEMU does
            await q.disconnect()

    try:
        try:
            asyncio.run(asyncio.wait_for(go(), 60))
        except Exception:
            proc.kill()
            _, err = proc.communicate()
            print(f"engine exit {proc.returncode}; stderr:\n{err.decode()[-3000:]}")
            raise
        assert proc.wait(15) == 0
        assert not qmp.exists(), "the engine must remove its QMP socket at exit"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# -- issue 13 item 12: answers from the VM, in QEMU's shapes ------------------------------------


def _qemu_answers(tmp_path: Path, commands: list[str]) -> dict[str, object] | None:
    """What QEMU (microvm, TCG) answers for a raw file on virtio-blk; None without QEMU."""
    import json
    import shutil
    import socket

    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    img = tmp_path / "q.img"
    img.write_bytes(b"\0" * (1 << 20))
    sock = tmp_path / "qemu.sock"
    proc = subprocess.Popen(
        [qemu, "-machine", "microvm", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-drive", f"file={img},format=raw,if=none,id=drive0",
         "-device", "virtio-blk-device,drive=drive0,id=disk0",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        f = s.makefile("rwb")
        f.readline()
        out: dict[str, object] = {}
        for cmd in ["qmp_capabilities", *commands]:
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while "event" in (reply := json.loads(f.readline())):
                pass
            out[cmd] = reply["return"]
        s.close()
        return out
    finally:
        proc.kill()
        proc.wait()


def _keys(value: object) -> object:
    """The shape of a JSON value: its keys, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return type(value).__name__


def test_block_queries_answer_from_the_engine_in_qemus_shapes(tmp_path: Path) -> None:
    import dataclasses

    from engine.machine.layout import virtio_mmio_slot
    from engine.plan import BlkPlan

    kernel = write_guest(tmp_path, say(b"q\n") + HANG)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\1" * (3 << 20))
    base, irq = virtio_mmio_slot(0)
    blk = BlkPlan(id="disk0", mmio_base=base, irq=irq, file=str(disk), direct=False, aio="off",
                  drive_id="drive0", iothread="io0")  # fmt: skip
    qmp = tmp_path / "qmp.sock"
    plan = make_plan(kernel, serial_file=tmp_path / "serial.txt")
    plan = dataclasses.replace(
        plan, devices=(blk,), iothreads=("io0",), qmp=(str(qmp),), paused=True
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.dumps())
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--plan", str(plan_file)],
                            cwd=ROOT, stderr=subprocess.PIPE)  # fmt: skip
    names = ["query-block", "query-blockstats", "query-named-block-nodes", "query-iothreads"]

    async def go() -> dict[str, object]:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        q = QMPClient("shapes")
        await q.connect(str(qmp))
        got = {n: await q.execute(n) for n in names}
        chardevs = await q.execute("query-chardev")
        await q.execute("quit")
        with contextlib.suppress(EOFError):
            await q.disconnect()
        got["query-chardev"] = chardevs
        return got

    try:
        got = asyncio.run(asyncio.wait_for(go(), 60))
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    [b] = got["query-block"]
    assert (b["device"], b["qdev"], b["inserted"]["file"]) == ("drive0", "disk0", str(disk))
    assert b["inserted"]["image"]["virtual-size"] == 3 << 20
    assert b["inserted"]["image"]["actual-size"] == disk.stat().st_blocks * 512
    assert b["inserted"]["cache"] == {"writeback": True, "direct": False, "no-flush": False}
    [s] = got["query-blockstats"]
    assert s["stats"]["rd_operations"] == 0 and s["qdev"] == "disk0"
    [io] = got["query-iothreads"]
    assert io["id"] == "io0"
    assert {c["label"] for c in got["query-chardev"]} == {"serial0"}
    qemu = _qemu_answers(tmp_path, names[:3])
    if qemu is not None:  # the same shapes as QEMU's own answers
        # io-status: QEMU reports it when the VM stops on I/O errors; the engine never does
        qb = {k: v for k, v in qemu["query-block"][0].items() if k != "io-status"}
        assert _keys(b) == _keys(qb)
        qs = qemu["query-blockstats"][0]  # QEMU adds its file node as "parent"; raw has one node
        assert set(s) == set(qs) - {"parent"}
        assert set(s["stats"]) - {"idle_time_ns"} == set(qs["stats"]) - {"idle_time_ns"}
        assert _keys(got["query-named-block-nodes"][0]) == _keys(qemu["query-named-block-nodes"][0])


def test_counters_and_balloon_events_come_from_the_running_devices(tmp_path: Path) -> None:
    """An in-process engine VM: a driver does real I/O on its virtio-blk and moves its balloon
    (as a guest would, through the MMIO transport); QMP then reports exactly that."""
    import dataclasses
    import struct
    import threading

    from virtio_driver import Allocator, Driver

    from engine.machine.layout import virtio_mmio_slot
    from engine.plan import BalloonPlan, BlkPlan
    from engine.qmp.server import QmpServer
    from engine.virtio import blk_spec as BS
    from engine.virtio import mmio_regs as R
    from engine.vm import Vm

    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    base0, irq0 = virtio_mmio_slot(0)
    base1, irq1 = virtio_mmio_slot(1)
    plan = make_plan(write_guest(tmp_path, HANG), serial_file=tmp_path / "serial.txt")
    plan = dataclasses.replace(
        plan,
        devices=(
            BlkPlan(id="disk0", mmio_base=base0, irq=irq0, file=str(disk), direct=False,
                    aio="off", drive_id="drive0"),
            BalloonPlan(id="balloon0", mmio_base=base1, irq=irq1),
        ),
    )  # fmt: skip
    vm = Vm(plan)
    vm.start(paused=True)
    loop = threading.Thread(target=vm.machine.loop.run, daemon=True)
    loop.start()
    srv = QmpServer(vm, [str(tmp_path / "q.sock")], loop=vm.machine.loop)
    vm.sink = srv
    srv.start()
    try:
        atts = {a.spec.id: a for a in vm.machine.devices.virtio}
        alloc = Allocator(32 << 20, 48 << 20)
        drv = Driver(atts["disk0"].transport, vm.machine.mem, alloc)
        drv.start()
        q0 = drv.queues[0]
        hdr = struct.Struct("<IIQ")
        for rtype, sector, out, data_in in (
            (BS.VIRTIO_BLK_T_IN, 0, b"", 4096),
            (BS.VIRTIO_BLK_T_OUT, 8, b"w" * 2048, 0),
            (BS.VIRTIO_BLK_T_FLUSH, 0, b"", 0),
        ):
            q0.add([hdr.pack(rtype, 0, sector)] + ([out] if out else []),
                   [data_in, 1] if data_in else [1])  # fmt: skip
            q0.kick()
            deadline = time.monotonic() + 5
            while not (done := q0.collect()):
                assert time.monotonic() < deadline, "the device never completed the request"
                time.sleep(0.005)
            assert done[0].data[-1] == 0
        bdrv = Driver(atts["balloon0"].transport, vm.machine.mem, Allocator(48 << 20, 56 << 20))
        bdrv.start()

        async def go() -> None:
            c = QMPClient("counters")
            await c.connect(srv.paths[0])
            [s] = await c.execute("query-blockstats")
            st = s["stats"]
            assert (st["rd_operations"], st["rd_bytes"]) == (1, 4096)
            assert (st["wr_operations"], st["wr_bytes"]) == (1, 2048)
            assert st["flush_operations"] == 1 and st["wr_highest_offset"] == 8 * 512 + 2048
            with c.listener("BALLOON_CHANGED") as listener:
                bdrv.transport.write(R.CONFIG + 4, 4, 256)  # the guest now holds 256 pages
                ev = await asyncio.wait_for(listener.get(), 5)
            assert ev["data"] == {"actual": plan.memory.size - 256 * 4096}
            assert await c.execute("query-balloon") == {"actual": plan.memory.size - 256 * 4096}
            await c.disconnect()

        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        srv.close()
        vm.quit()
        loop.join(5)
        vm.close()

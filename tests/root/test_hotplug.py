"""QMP hot-replace on real KVM: block/net devices into the plan's empty virtio-mmio slots.

The tiny guest maps the virtio-mmio windows (the host writes one extra page-table level before
it starts) and spins reading block slot 1's DeviceID register, printing it on COM1 whenever it
changes; so "the guest sees the device" is checked through real MMIO exits, not by asking the
engine. Ioeventfd wiring is checked against KVM itself: assigning another eventfd at the same
QueueNotify address/datamatch fails with EEXIST exactly while a device's queue owns it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import time
from pathlib import Path

import pytest
from tiny_guest import COM1, make_plan, mov_dx, write_guest

from engine.machine import layout
from engine.machine.kvm import KvmError
from engine.machine.layout import VIRTIO_MMIO_BASE, virtio_mmio_slot
from engine.plan import BlkPlan, ChardevPlan, ConsolePlan, SlotPlan
from engine.qmp.control import BlockdevSpec, DeviceSpec, NetdevSpec, QmpError
from engine.qmp.protocol import DEVICE_NOT_FOUND
from engine.vm import Vm
from launcher.compile.engine_plan import default_mac

pytestmark = pytest.mark.kvm

QUEUE_NOTIFY = 0x50
PD_3G = 0xC000  # a free page for the page directory of [3 GiB, 4 GiB)


def watch_device_id(base: int) -> bytes:
    """Spin reading DeviceID at ``base``; print '0'+id on COM1 whenever it changes."""
    code = b"\xbe" + (base + 8).to_bytes(4, "little")  # mov esi, base+8
    code += b"\xb3\xff"  # mov bl, 0xff
    loop = len(code)
    body = b"\x8b\x06"  # mov eax, [rsi]
    body += b"\x38\xd8"  # cmp al, bl
    body += b"\x74" + (loop - (loop + len(body) + 2) & 0xFF).to_bytes(1, "little")  # je loop
    body += b"\x88\xc3"  # mov bl, al
    body += b"\x04\x30" + mov_dx(COM1) + b"\xee"  # add al,'0' ; mov dx,COM1 ; out dx,al
    end = loop + len(body) + 2
    body += b"\xeb" + ((loop - end) & 0xFF).to_bytes(1, "little")  # jmp loop
    return code + body


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict | None]] = []

    def emit(self, name: str, data: dict | None = None) -> None:
        self.events.append((name, data))


def slot_plan(tmp_path: Path, *, cold: bool = True, extra: tuple = ()):
    serial = tmp_path / "serial"
    disk0 = tmp_path / "disk0.img"
    disk0.write_bytes(b"\0" * (1 << 20))
    blk1_base, _ = virtio_mmio_slot(1)
    plan = make_plan(write_guest(tmp_path, watch_device_id(blk1_base)), serial_file=serial)
    devices = []
    for i in range(4):
        base, irq = virtio_mmio_slot(i)
        if i == 0 and cold:
            devices.append(BlkPlan(id="disk0", mmio_base=base, irq=irq, file=str(disk0)))
        else:
            devices.append(SlotPlan(id=f"blk-slot{i}", mmio_base=base, irq=irq, accepts="blk"))
    for i in range(2):
        base, irq = virtio_mmio_slot(4 + i)
        devices.append(SlotPlan(id=f"net-slot{i}", mmio_base=base, irq=irq, accepts="net"))
    return dataclasses.replace(plan, devices=(*devices, *extra)), serial


def start(plan) -> tuple[Vm, Events]:
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start(paused=True)
    mem = vm.machine.mem
    mem.write_u64(layout.PDPTE_START + 3 * 8, PD_3G | 0x03)  # 3-4 GiB -> our page directory
    pde = (VIRTIO_MMIO_BASE - 0xC000_0000) >> 21
    mem.write_u64(PD_3G + pde * 8, VIRTIO_MMIO_BASE | 0x83)  # 2 MiB page over the windows
    vm.resume()
    return vm, ev


def wait_serial(vm: Vm, serial: Path, want: bytes, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if serial.exists() and serial.read_bytes() == want:
            return
        assert vm.wait(0.02) is None, f"VM stopped: {vm.stop_reason}"
    got = serial.read_bytes() if serial.exists() else b""
    pytest.fail(f"guest printed {got!r}, expected {want!r}")


def notify_owned(vm: Vm, base: int, queue: int = 0) -> bool:
    """Whether KVM already has an ioeventfd on ``base``'s QueueNotify for ``queue``."""
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        vm.machine.vm.register_ioeventfd(efd, base + QUEUE_NOTIFY, 4, datamatch=queue)
    except KvmError as e:
        assert e.errno == errno.EEXIST
        return True
    finally:
        pass
    vm.machine.vm.register_ioeventfd(efd, base + QUEUE_NOTIFY, 4, datamatch=queue, deassign=True)
    os.close(efd)
    return False


def test_block_hot_replace_is_seen_by_the_guest(tmp_path) -> None:
    plan, serial = slot_plan(tmp_path)
    disk1 = tmp_path / "disk1.img"
    disk1.write_bytes(b"\0" * (1 << 20))
    base1, _ = virtio_mmio_slot(1)
    vm, ev = start(plan)
    try:
        wait_serial(vm, serial, b"0")  # an empty slot: DeviceID 0
        assert not notify_owned(vm, base1)
        vm.blockdev_add(BlockdevSpec("disk1", str(disk1)))
        vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 1))
        wait_serial(vm, serial, b"02")  # virtio-blk is DeviceID 2
        att = vm.machine.devices.attached("disk1")
        assert type(att.transport.device).__name__ == "Blk"
        assert vm.machine.mmio.lookup(base1)[1] is att.transport
        assert notify_owned(vm, base1)
        # the TUI's x-svlaunch-query-stats: the hot-added disk reports its counters, slots don't
        stats = {d.id: d.counters for d in vm.stats().devices}
        assert "disk1" in stats and not any(k.startswith("blk-slot") for k in stats)
        assert {"requests", "bytes_in", "bytes_out", "errors"} <= set(stats["disk1"])
        # the kick eventfd is polled by the device's loop: a write is drained there
        os.eventfd_write(att.kick_fds[0], 1)
        vm.wait(0.1)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(att.kick_fds[0])

        vm.device_del("disk1")
        wait_serial(vm, serial, b"020")
        assert ("DEVICE_DELETED", {"device": "disk1", "path": "disk1"}) in ev.events
        assert not notify_owned(vm, base1), "the old queue's ioeventfd must be deassigned"
        assert vm.machine.devices.attached("disk1") is None

        # the backend is free again: add it back through drive=, under another id
        vm.device_add(DeviceSpec("blk-a", "virtio-blk-device", "blk", 1, {"drive": "disk1"}))
        wait_serial(vm, serial, b"0202")
        vm.device_del("blk-a")
        wait_serial(vm, serial, b"02020")
        vm.blockdev_del("disk1")
        vm.quit()
        assert vm.wait(10) == 0
    finally:
        vm.close()


def test_a_hot_added_disk_offers_discard_only_when_asked(tmp_path) -> None:
    """blockdev-add's discard reaches the device: "unmap" offers VIRTIO_BLK_F_DISCARD (holes are
    punched in the file), the default "ignore" does not, as QEMU."""
    plan, _serial = slot_plan(tmp_path)
    vm, _ev = start(plan)
    try:
        for node, discard in (("d-unmap", "unmap"), ("d-ignore", "ignore")):
            disk = tmp_path / f"{node}.img"
            disk.write_bytes(b"\1" * (1 << 20))
            vm.blockdev_add(BlockdevSpec(node, str(disk), discard=discard))
            vm.device_add(DeviceSpec(node, "virtio-blk-device", "blk", 1))
            att = vm.machine.devices.attached(node)
            assert att.spec.discard == discard
            assert att.transport.device.can_punch is (discard == "unmap")
            vm.device_del(node)
            vm.blockdev_del(node)
        vm.quit()
        assert vm.wait(10) == 0
    finally:
        vm.close()


def test_a_cold_plugged_disk_is_replaced_like_a_hot_plugged_one(tmp_path) -> None:
    """The manifest's disk has a backend too: device_del, blockdev-del, blockdev-add, device_add
    (what a GitOps live update of a drive sends) swap it for another file in the same slot."""
    plan, _serial = slot_plan(tmp_path)
    new = tmp_path / "new.img"
    new.write_bytes(b"\1" * (1 << 20))
    base0, _ = virtio_mmio_slot(0)
    vm, _ev = start(plan)
    try:
        with pytest.raises(QmpError, match="in use"):
            vm.blockdev_del("disk0")  # its device still uses it
        vm.device_del("disk0")
        assert vm.machine.mmio.read(base0 + 8, 4) == 0  # an empty slot again
        vm.blockdev_del("disk0")
        with pytest.raises(QmpError, match="not found"):
            vm.blockdev_del("disk0")
        vm.blockdev_add(BlockdevSpec("disk0", str(new)))
        vm.device_add(DeviceSpec("disk0", "virtio-blk-device", "blk", 0))
        att = vm.machine.devices.attached("disk0")
        assert att.spec.file == str(new) and vm.machine.mmio.read(base0 + 8, 4) == 2
        vm.quit()
        assert vm.wait(10) == 0
    finally:
        vm.close()


def test_hot_replace_refusals(tmp_path) -> None:
    plan, serial = slot_plan(tmp_path)
    disk1 = tmp_path / "disk1.img"
    disk1.write_bytes(b"\0" * 4096)
    vm, ev = start(plan)
    try:
        wait_serial(vm, serial, b"0")
        with pytest.raises(QmpError, match="No backend 'disk1'"):
            vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 1))
        with pytest.raises(QmpError, match="No such file"):
            vm.blockdev_add(BlockdevSpec("nofile", str(tmp_path / "missing.img")))
        vm.blockdev_add(BlockdevSpec("disk1", str(disk1)))
        with pytest.raises(QmpError, match="already exists"):
            vm.blockdev_add(BlockdevSpec("disk1", str(disk1)))
        with pytest.raises(QmpError, match="occupied by 'disk0'"):
            vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 0))
        with pytest.raises(QmpError, match="blk slot 7 does not exist"):
            vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 7))
        with pytest.raises(QmpError, match="already in use"):
            vm.device_add(DeviceSpec("disk0", "virtio-blk-device", "blk", 2, {"drive": "disk1"}))
        # the manifest's device rules hold for hot-plug too (queue size, serial length)
        with pytest.raises(QmpError, match="queue-size"):
            vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 2, {"queue-size": 3}))
        with pytest.raises(QmpError, match="serial"):
            vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 2, {"serial": "s" * 21}))
        vm.device_add(DeviceSpec("disk1", "virtio-blk-device", "blk", 2))
        added = vm.machine.devices.attached("disk1").spec
        assert added.aio == "native" and added.queue_size == 256  # the cold-plug defaults
        with pytest.raises(QmpError, match="in use by device 'disk1'"):
            vm.blockdev_del("disk1")
        with pytest.raises(QmpError) as e:
            vm.device_del("nope")
        assert e.value.error_class == DEVICE_NOT_FOUND
        with pytest.raises(QmpError) as e:
            vm.blockdev_del("nope")
        assert e.value.error_class == DEVICE_NOT_FOUND
        # a cold-plugged drive sits in block slot 0 and can be removed too
        vm.device_del("disk0")
        assert isinstance(vm.machine.devices.attached("blk-slot0").spec, SlotPlan)
        assert [d for d, _ in ev.events].count("DEVICE_DELETED") == 1
        assert [d.id for d in vm.stats().devices] == ["disk1"]
        assert serial.read_bytes() == b"0", "block slot 1 never changed"
    finally:
        vm.close()


def test_console_and_empty_slot_are_not_unpluggable(tmp_path) -> None:
    base, irq = virtio_mmio_slot(6)
    out = tmp_path / "console.txt"
    console = ConsolePlan(
        id="con0", mmio_base=base, irq=irq, chardev=ChardevPlan("cons", "file", str(out))
    )
    plan, serial = slot_plan(tmp_path, extra=(console,))
    vm, _ = start(plan)
    try:
        wait_serial(vm, serial, b"0")
        with pytest.raises(QmpError, match="cannot be unplugged"):
            vm.device_del("con0")
        with pytest.raises(QmpError) as e:
            vm.device_del("blk-slot1")  # an empty slot is not a device
        assert e.value.error_class == DEVICE_NOT_FOUND
    finally:
        vm.close()


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_net_hot_replace_on_a_tap(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a tap needs root")
    plan, serial = slot_plan(tmp_path)
    base, _ = virtio_mmio_slot(5)  # net slot 1
    ifname = f"svhp{os.getpid() % 100000}"
    vm, ev = start(plan)
    try:
        wait_serial(vm, serial, b"0")
        vm.netdev_add(NetdevSpec("net1", ifname=ifname))
        vm.device_add(
            DeviceSpec("net1", "virtio-net-device", "net", 1, {"mac": "52:54:00:12:34:56"})
        )
        att = vm.machine.devices.attached("net1")
        assert type(att.transport.device).__name__ == "Net"
        assert vm.machine.mmio.read(base + 8, 4) == 1  # virtio-net DeviceID
        assert os.path.exists(f"/sys/class/net/{ifname}")
        assert notify_owned(vm, base, 0) and notify_owned(vm, base, 1)
        with pytest.raises(QmpError, match="in use"):
            vm.netdev_del("net1")
        vm.device_del("net1")
        assert vm.machine.mmio.read(base + 8, 4) == 0
        assert not notify_owned(vm, base, 0)
        with pytest.raises(QmpError, match=r"(?i)mac"):
            vm.device_add(DeviceSpec("net1", "virtio-net-device", "net", 1, {"mac": "52-54-00"}))
        vm.device_add(DeviceSpec("net1", "virtio-net-device", "net", 1))  # no mac: as cold-plug
        assert vm.machine.devices.attached("net1").spec.mac == default_mac(plan.name, "net1")
        vm.device_del("net1")
        vm.netdev_del("net1")
        assert ("DEVICE_DELETED", {"device": "net1", "path": "net1"}) in ev.events
    finally:
        vm.close()
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if idx:
                ipr.link("del", index=idx[0])


def test_hot_replace_over_qmp_in_the_engine_process(tmp_path) -> None:
    """blockdev-add / device_add / device_del on the wire (qemu.qmp) against ``python -m engine``."""
    import asyncio
    import subprocess

    from qemu.qmp import QMPClient
    from qemu.qmp.qmp_client import ExecuteError

    from engine.__main__ import engine_argv

    plan, _serial = slot_plan(tmp_path)
    qmp = tmp_path / "qmp.sock"
    disk = tmp_path / "hot.img"
    disk.write_bytes(b"\0" * 4096)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(dataclasses.replace(plan, qmp=(str(qmp),), paused=True).dumps())
    proc = subprocess.Popen(
        engine_argv(str(plan_file)), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    async def go() -> None:
        end = time.monotonic() + 30
        while not qmp.exists():
            assert proc.poll() is None and time.monotonic() < end, "no QMP socket"
            await asyncio.sleep(0.02)
        q = QMPClient("hotplug-test")
        await q.connect(str(qmp))
        await q.execute("blockdev-add", {"node-name": "hot0", "file": {"filename": str(disk)}})
        await q.execute("device_add", {"id": "hot0", "driver": "virtio-blk-device", "addr": "0x1"})
        await q.execute("blockdev-add", {"node-name": "hot1", "file": {"filename": str(disk)}})
        with pytest.raises(ExecuteError, match="occupied by 'hot0'"):
            await q.execute(
                "device_add", {"id": "hot1", "driver": "virtio-blk-device", "addr": "0x1"}
            )
        stats = await q.execute("x-svlaunch-query-stats")
        assert {d["id"] for d in stats["devices"]} >= {"disk0", "hot0"}
        with q.listener("DEVICE_DELETED") as listener:
            await q.execute("device_del", {"id": "hot0"})
            ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["data"] == {"device": "hot0", "path": "hot0"}
        with pytest.raises(ExecuteError) as e:
            await q.execute("device_del", {"id": "hot0"})
        assert e.value.error_class == DEVICE_NOT_FOUND
        await q.execute("blockdev-del", {"node-name": "hot0"})
        await q.execute("quit")
        with contextlib.suppress(EOFError):
            await q.disconnect()

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        print(err.decode()[-2000:])


# -- issue 13 item 10: hot-plug opens host files through the manifest's check -------------------


def _blocks(fn, timeout: float = 5.0) -> object:
    """Run ``fn`` in a thread; fail (not hang) when it blocks. Returns its result or exception."""
    import threading

    out: list[object] = []

    def call() -> None:
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hot-plug blocked the calling (QMP) thread"
    return out[0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_hot_plug_refuses_fifos_and_kernel_files_without_blocking(tmp_path) -> None:
    plan, serial = slot_plan(tmp_path)
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    vm, _ = start(plan)
    try:
        wait_serial(vm, serial, b"0")
        before = _open_fds()
        err = _blocks(lambda: vm.blockdev_add(BlockdevSpec("f", str(fifo))))
        assert isinstance(err, QmpError) and "FIFO" in err.desc
        err = _blocks(lambda: vm.blockdev_add(BlockdevSpec("m", "/proc/self/mem")))
        assert isinstance(err, QmpError) and "procfs" in err.desc
        err = _blocks(lambda: vm.blockdev_add(BlockdevSpec("z", "/dev/zero", read_only=True)))
        assert isinstance(err, QmpError) and "character device" in err.desc
        assert _open_fds() == before, "a refused file left a descriptor open"
        # Checked at blockdev-add, then swapped for a FIFO before device_add: still refused.
        vm.blockdev_add(BlockdevSpec("swap", str(disk)))
        disk.unlink()
        os.mkfifo(disk)
        err = _blocks(lambda: vm.device_add(DeviceSpec("swap", "virtio-blk-device", "blk", 1)))
        assert isinstance(err, QmpError) and "FIFO" in err.desc
        assert isinstance(vm.machine.devices.attached("blk-slot1").spec, SlotPlan)
        assert _open_fds() == before + 0
    finally:
        vm.close()


def _links(prefix: str) -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    return {n for n in names if n.startswith(prefix)}


@pytest.mark.root
def test_a_tap_name_template_is_refused_everywhere(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a tap needs root")
    from engine.errors import HostError
    from engine.virtio.tap import Tap

    prefix = f"svq{os.getpid() % 10000}"
    plan, serial = slot_plan(tmp_path)
    vm, _ = start(plan)
    try:
        wait_serial(vm, serial, b"0")
        with pytest.raises(QmpError, match="numbered tap"):
            vm.netdev_add(NetdevSpec("n0", ifname=f"{prefix}%d"))
        with pytest.raises(HostError, match="numbered tap"):
            Tap.open(f"{prefix}%d")  # the engine's own last line of defence
        assert _links(prefix) == set(), "a numbered tap was created"
    finally:
        vm.close()
        for name in _links(prefix):
            Tap._delete(name)


@pytest.mark.root
def test_a_failed_start_removes_the_tap_it_created(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a tap needs root")
    from engine.errors import SvlaunchError
    from engine.plan import NetPlan
    from engine.virtio.tap import Tap

    ifname = f"svf{os.getpid() % 100000}"
    base, irq = virtio_mmio_slot(0)
    plan, _ = slot_plan(tmp_path, cold=False)
    clash = (
        BlkPlan(id="first", mmio_base=base + 0x10000, irq=irq, file=str(tmp_path / "a.img")),
        NetPlan(id="net9", mmio_base=base + 0x10000, irq=irq + 1, ifname=ifname),
    )
    (tmp_path / "a.img").write_bytes(b"\0" * 4096)
    plan = dataclasses.replace(plan, devices=(*plan.devices, *clash))
    vm = Vm(plan)
    try:
        with pytest.raises((SvlaunchError, ValueError)):
            vm.start(paused=True)  # the NIC's window overlaps the disk's: attach fails
        assert not _links(ifname), "the tap created for the failed start was left behind"
    finally:
        vm.close()
        Tap._delete(ifname)

"""virtio-blk driven by the Python driver over a real file: reads, writes, RO, flush, id, throttle."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from virtio_driver import Allocator, Driver, DriverQueue

from engine.eventloop import EventLoop
from engine.machine.memory import GuestMemory
from engine.virtio import blk as B
from engine.virtio import blk_spec as BS
from engine.virtio.mmio import MmioTransport
from launcher.errors import HostError

MiB = 1 << 20
HDR = struct.Struct("<IIQ")


class Rig:
    def __init__(self, path: Path, loop: EventLoop | None = None, **kw) -> None:
        self.mem = GuestMemory.anonymous([(0, 64 * MiB)])
        self.dev = B.Blk("blk0", str(path), loop=loop, **kw)
        self.t = MmioTransport(self.dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(0x1000, 64 * MiB))
        self.features = self.drv.start()
        self.q: DriverQueue = self.drv.queues[0]

    def request(
        self,
        rtype: int,
        sector: int,
        *,
        out: bytes = b"",
        data_in: int = 0,
        q: DriverQueue | None = None,
    ):
        q = q or self.q
        mark = self.drv.alloc.mark()
        ins = [data_in, 1] if data_in else [1]
        q.add([HDR.pack(rtype, 0, sector)] + ([out] if out else []), ins)
        q.kick()
        (c,) = q.collect()
        self.drv.alloc.release(mark)
        return c.data[-1], c.data[:-1], c.length

    def close(self) -> None:
        self.t.close()
        self.mem.close()


@pytest.fixture
def disk(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(4 * MiB)
    p = tmp_path / "disk.raw"
    p.write_bytes(data)
    return p, data


def test_reads_match_the_file(disk) -> None:
    path, data = disk
    r = Rig(path)
    try:
        assert r.drv.config(0, 8) == len(data) // 512  # capacity in sectors
        for sector, n in ((0, 512), (7, 4096), (8000, 65536), (8191, 512)):
            status, got, length = r.request(BS.VIRTIO_BLK_T_IN, sector, data_in=n)
            assert status == BS.VIRTIO_BLK_S_OK and length == n + 1
            assert got == data[sector * 512 : sector * 512 + n]
        assert r.dev.stats.requests == 4 and r.dev.stats.bytes_out == 512 + 4096 + 65536 + 512
    finally:
        r.close()


def test_writes_reach_the_file(disk) -> None:
    path, _data = disk
    r = Rig(path)
    try:
        payload = os.urandom(8192)
        status, _, length = r.request(BS.VIRTIO_BLK_T_OUT, 100, out=payload)
        assert status == BS.VIRTIO_BLK_S_OK and length == 1
        assert path.read_bytes()[100 * 512 : 100 * 512 + 8192] == payload
    finally:
        r.close()


def test_out_of_range_and_unaligned_requests_fail(disk) -> None:
    path, data = disk
    r = Rig(path)
    try:
        cap = len(data) // 512
        assert r.request(BS.VIRTIO_BLK_T_IN, cap, data_in=512)[0] == BS.VIRTIO_BLK_S_IOERR
        assert r.request(BS.VIRTIO_BLK_T_IN, cap - 1, data_in=1024)[0] == BS.VIRTIO_BLK_S_IOERR
        assert r.request(BS.VIRTIO_BLK_T_IN, (1 << 64) - 1, data_in=512)[0] == BS.VIRTIO_BLK_S_IOERR
        assert r.request(BS.VIRTIO_BLK_T_OUT, 0, out=b"x" * 100)[0] == BS.VIRTIO_BLK_S_IOERR
        assert r.request(99, 0)[0] == BS.VIRTIO_BLK_S_UNSUPP
        assert path.read_bytes() == data
    finally:
        r.close()


def test_short_header_gets_ioerr(disk) -> None:
    r = Rig(disk[0])
    try:
        r.q.add([b"\0" * 8], [1])
        r.q.kick()
        (c,) = r.q.collect()
        assert c.data == bytes([BS.VIRTIO_BLK_S_IOERR]) and c.length == 1
    finally:
        r.close()


def test_readonly_disk_refuses_writes_and_stays_unchanged(disk) -> None:
    path, data = disk
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    r = Rig(path, readonly=True)
    try:
        assert r.features & 1 << BS.VIRTIO_BLK_F_RO
        assert not r.features & 1 << BS.VIRTIO_BLK_F_DISCARD
        assert r.request(BS.VIRTIO_BLK_T_OUT, 0, out=b"\xff" * 4096)[0] == BS.VIRTIO_BLK_S_IOERR
        seg = struct.pack("<QII", 0, 8, 0)
        assert r.request(BS.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=seg)[0] != BS.VIRTIO_BLK_S_OK
        assert r.request(BS.VIRTIO_BLK_T_IN, 0, data_in=4096)[1] == data[:4096]
    finally:
        r.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert path.stat().st_mtime_ns == mtime


def test_get_id_returns_the_serial(disk) -> None:
    r = Rig(disk[0], serial="SVL-0001")
    try:
        status, got, length = r.request(BS.VIRTIO_BLK_T_GET_ID, 0, data_in=20)
        assert status == BS.VIRTIO_BLK_S_OK and got == b"SVL-0001".ljust(20, b"\0") and length == 21
    finally:
        r.close()


def test_serial_longer_than_20_bytes_is_a_clear_error(disk) -> None:
    with pytest.raises(HostError, match="limit 20"):
        B.Blk("blk0", str(disk[0]), serial="x" * 21)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"cannot open .*nope\.raw") as e:
        B.Blk("blk0", str(tmp_path / "nope.raw"))
    assert e.value.hint


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_flush_reaches_the_disk_as_fdatasync(disk) -> None:
    """Run a flush in a child under strace: the fdatasync(2) must really be issued."""
    path, _ = disk
    script = textwrap.dedent(
        f"""
        import sys, struct
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1] / "support"), str(Path(__file__).parents[2])]!r}
        from test_virtio_blk import Rig, BS
        from pathlib import Path
        r = Rig(Path({str(path)!r}))
        assert r.features & 1 << BS.VIRTIO_BLK_F_FLUSH
        r.request(BS.VIRTIO_BLK_T_OUT, 0, out=b"a" * 512)
        sys.stdout.write("FLUSH-START\\n"); sys.stdout.flush()
        status = r.request(BS.VIRTIO_BLK_T_FLUSH, 0)[0]
        print("status", status, "fd", r.dev.fd, flush=True)
        """
    )
    out = subprocess.run(
        ["strace", "-f", "-e", "trace=fdatasync,write", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    fd = int(out.stdout.split("fd")[1])
    assert "status 0" in out.stdout
    after = out.stderr.split("FLUSH-START", 1)[1]
    assert re.search(rf"fdatasync\({fd}\)\s+= 0", after), after


def test_direct_io_with_aligned_and_unaligned_guest_buffers(disk) -> None:
    path, data = disk
    r = Rig(path, direct=True)
    try:
        # Aligned buffers go straight to O_DIRECT preadv.
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8)], [8192, 1], in_align=4096)
        r.q.kick()
        (c,) = r.q.collect()
        assert c.data[:-1] == data[4096 : 4096 + 8192] and c.data[-1] == 0
        assert r.dev.sync._bounce is None
        # Unaligned guest buffers (16-byte aligned) need the bounce buffer, reads and writes.
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 3)], [1536, 1], in_align=16)
        r.q.kick()
        (c,) = r.q.collect()
        assert c.data[:-1] == data[1536 : 1536 + 1536]
        assert r.dev.sync._bounce is not None
        payload = os.urandom(2048)
        status, _, _ = r.request(BS.VIRTIO_BLK_T_OUT, 5, out=payload)
        assert status == 0
        assert path.read_bytes()[2560 : 2560 + 2048] == payload
        assert path.read_bytes()[:2560] == data[:2560]
    finally:
        r.close()


def test_without_discard_the_guest_sees_neither_discard_nor_write_zeroes(disk) -> None:
    path, data = disk
    blocks = path.stat().st_blocks
    r = Rig(path)
    try:
        assert not r.features & (1 << BS.VIRTIO_BLK_F_DISCARD | 1 << BS.VIRTIO_BLK_F_WRITE_ZEROES)
        seg = struct.pack("<QII", 0, 2048, 0)
        assert r.request(BS.VIRTIO_BLK_T_DISCARD, 0, out=seg)[0] == BS.VIRTIO_BLK_S_UNSUPP
        assert r.request(BS.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=seg)[0] == BS.VIRTIO_BLK_S_UNSUPP
    finally:
        r.close()
    assert path.read_bytes() == data and path.stat().st_blocks == blocks


def test_discard_punches_a_hole_and_write_zeroes_zeroes(disk) -> None:
    path, data = disk
    r = Rig(path, discard=True)
    try:
        if not r.features & 1 << BS.VIRTIO_BLK_F_DISCARD:
            pytest.skip("file system without punch-hole")
        blocks = path.stat().st_blocks
        seg = struct.pack("<QII", 0, 2048, 0)  # 1 MiB
        assert r.request(BS.VIRTIO_BLK_T_DISCARD, 0, out=seg)[0] == 0
        assert path.stat().st_blocks <= blocks - 2048 + 16
        seg = struct.pack("<QII", 4096, 16, 0)
        assert r.request(BS.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=seg)[0] == 0
        now = path.read_bytes()
        assert now[: 1 * MiB] == bytes(MiB)
        assert now[2 * MiB : 2 * MiB + 8192] == bytes(8192)
        assert now[MiB : 2 * MiB] == data[MiB : 2 * MiB]
        assert len(now) == len(data)
        bad = struct.pack("<QII", len(data) // 512, 1, 0)
        assert r.request(BS.VIRTIO_BLK_T_DISCARD, 0, out=bad)[0] == BS.VIRTIO_BLK_S_IOERR
    finally:
        r.close()


def test_multiqueue(disk) -> None:
    path, data = disk
    r = Rig(path, num_queues=4)
    try:
        assert r.features & 1 << BS.VIRTIO_BLK_F_MQ
        assert r.drv.config(34, 2) == 4
        for i in range(4):
            q = r.drv.queues[i]
            status, got, _ = r.request(BS.VIRTIO_BLK_T_IN, i, data_in=512, q=q)
            assert status == 0 and got == data[i * 512 : (i + 1) * 512]
    finally:
        r.close()


def test_indirect_descriptors(disk) -> None:
    path, data = disk
    r = Rig(path)
    try:
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 2)], [512, 512, 1], indirect=True)
        r.q.kick()
        (c,) = r.q.collect()
        assert c.data[:-1] == data[1024:2048] and c.length == 1025
    finally:
        r.close()


def test_iops_throttle_bounds_the_rate_and_never_drops(disk) -> None:
    path, data = disk
    loop = EventLoop("iothread-test")
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    iops, n = 50, 40
    r = Rig(path, loop=loop, iops_total=iops)
    try:
        time.sleep(0.05)  # let the loop create the timer
        t0 = time.monotonic()
        for i in range(n):
            r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, i)], [512, 1])
        loop.call_soon_threadsafe(lambda: r.t.notify(0))
        done: list = []
        deadline = time.monotonic() + 10
        while len(done) < n and time.monotonic() < deadline:
            time.sleep(0.01)
            done += r.q.collect()
        elapsed = time.monotonic() - t0
        assert len(done) == n  # nothing dropped
        burst = max(1, iops // 10)
        assert elapsed >= (n - burst) / iops * 0.9, elapsed
        assert all(c.data[-1] == 0 for c in done)
        assert sorted(c.data[:-1] for c in done) == sorted(
            data[i * 512 : (i + 1) * 512] for i in range(n)
        )
        assert r.dev.stats.throttled_s > 0.3
    finally:
        loop.call_soon_threadsafe(r.close)
        loop.stop()
        th.join(2)

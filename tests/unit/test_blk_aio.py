"""virtio-blk's back ends (engine/io) under the Python driver, on real files and a real event loop.

Each ``aio`` mode serves reads, writes and flushes of a real file, O_DIRECT included (on a file
system that takes it: tests/support/directfs.py); a batch is one submission and completes in
whatever order the back end finishes; nothing is acknowledged before the back end says it is
done; a driver that posts faster than the host completes waits in its ring, with at most a
queue's worth in flight and nothing lost.

``HeldBackend`` wraps a real back end and holds its completions until the test lets them go (in
the order the test chooses): a fault-injecting back end, so the timing is the test's, while the
I/O itself is the kernel's.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from directfs import direct_folder
from virtio_driver import Allocator, Driver, DriverQueue

from engine.eventloop import EventLoop
from engine.io import FLUSH, Backend, IoRequest, open_backend
from engine.machine.memory import GuestMemory
from engine.virtio import blk as B
from engine.virtio import blk_spec as BS
from engine.virtio.device import VIRTIO_F_RING_EVENT_IDX
from engine.virtio.mmio import MmioTransport

MiB = 1 << 20
HDR = struct.Struct("<IIQ")
MODES = [("off", False), ("off", True), ("native", True), ("io_uring", False), ("io_uring", True)]
IDS = [f"{aio}{'-direct' if direct else ''}" for aio, direct in MODES]


class HeldBackend(Backend):
    """A real back end whose completions wait in ``held`` until ``release`` (any order)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.fd, inner.capacity)
        self.inner = inner
        self.mode = inner.mode
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.held: list[IoRequest] = []
        self.ready: list[IoRequest] = []
        self.submits: list[int] = []  # batch sizes
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def submit(self, reqs: list[IoRequest]) -> list[IoRequest]:
        """On the device's loop: the inner back end starts them; whatever it finishes is held."""
        with self.lock:
            self.submits.append(len(reqs))
            self.in_flight += len(reqs)
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.held += self.inner.submit(reqs)
        return []

    def settle(self, n: int, timeout: float = 10) -> None:
        """Wait until the kernel finished ``n`` held requests (reaped from the test thread)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                self.held += self.inner.reap()
                have = len(self.held)
            if have >= n or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        assert have >= n, f"the kernel finished {have} of {n}"

    def release(self, pick=lambda held: list(reversed(held))) -> list[IoRequest]:
        with self.lock:
            out = pick(self.held)
            self.held = [r for r in self.held if r not in out]
            self.ready += out
        os.eventfd_write(self.event_fd, 1)
        return out

    def reap(self) -> list[IoRequest]:
        try:
            os.eventfd_read(self.event_fd)
        except BlockingIOError:
            pass
        with self.lock:
            out, self.ready = self.ready, []
        self.in_flight -= len(out)
        return out

    def drain(self) -> list[IoRequest]:
        self.settle(self.in_flight)
        return self.release(lambda held: list(held)) and self.reap()

    def close(self) -> None:
        self.inner.close()
        os.close(self.event_fd)


class LoopRig:
    """A Blk on a real event loop thread, driven by the test's driver."""

    def __init__(self, path: Path, *, queue_size: int = 64, event_idx: bool = True, **kw) -> None:
        self.loop = EventLoop("blk-test")
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()
        self.mem = GuestMemory.anonymous([(0, 64 * MiB)])
        self.dev = B.Blk("blk0", str(path), loop=self.loop, queue_size=queue_size, **kw)
        self.t = MmioTransport(self.dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(0x1000, 64 * MiB))
        self.drv.start(drop=0 if event_idx else 1 << VIRTIO_F_RING_EVENT_IDX)
        self.q: DriverQueue = self.drv.queues[0]

    def hold(self) -> HeldBackend:
        """Put a ``HeldBackend`` around the device's back end (on the loop: it watches ours)."""
        dev, held = self.dev, HeldBackend(self.dev.backend)

        def swap() -> None:
            if held.inner.event_fd is not None:
                self.loop.remove_reader(held.inner.event_fd)
            dev.backend = held
            assert held.event_fd is not None
            self.loop.add_reader(held.event_fd, lambda: dev.guarded(dev._on_completions))

        self.on_loop(swap)
        return held

    def on_loop(self, fn) -> None:
        done = threading.Event()

        def go() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(go)
        assert done.wait(10)

    def kick(self) -> None:
        self.on_loop(lambda: self.t.notify(0))

    def wait_used(self, n: int, timeout: float = 10) -> list:
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += self.q.collect()
            time.sleep(0.002)
        assert len(got) == n, f"{len(got)} of {n} requests completed"
        return got

    def close(self) -> None:
        closed = threading.Event()

        def shut() -> None:
            self.t.close()
            closed.set()

        self.loop.call_soon_threadsafe(shut)
        closed.wait(10)
        self.loop.stop()
        self.thread.join(5)
        self.mem.close()


@pytest.fixture
def image(tmp_path: Path):
    with direct_folder(tmp_path) as folder:
        data = os.urandom(4 * MiB)
        path = folder / "disk.raw"
        path.write_bytes(data)
        yield path, data


@pytest.mark.parametrize(("aio", "direct"), MODES, ids=IDS)
def test_each_mode_reads_writes_and_flushes_a_real_file(image, aio: str, direct: bool) -> None:
    path, data = image
    r = LoopRig(path, aio=aio, direct=direct)
    try:
        assert r.dev.backend.mode == aio
        # one kick: single-buffer and scattered (indirect) reads, a write, a flush
        reads = [(0, [4096]), (9, [512, 1024]), (64, [4096, 4096, 8192]), (8184, [4096])]
        for sector, ins in reads:
            r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, sector)], [*ins, 1], indirect=len(ins) > 1,
                    in_align=4096)  # fmt: skip
        payload = os.urandom(8192)
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_OUT, 0, 1000), payload], [1], out_align=4096)
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_FLUSH, 0, 0)], [1])
        r.kick()
        done = {c.head: c for c in r.wait_used(len(reads) + 2)}
        assert all(c.data[-1] == BS.VIRTIO_BLK_S_OK for c in done.values())
        by_sector = {
            sector: c
            for (sector, _), c in zip(
                reads, sorted(done.values(), key=lambda c: c.head)[:4], strict=True
            )
        }
        for sector, ins in reads:
            want = data[sector * 512 : sector * 512 + sum(ins)]
            assert by_sector[sector].data[:-1] == want
            assert by_sector[sector].length == sum(ins) + 1
        assert path.read_bytes()[1000 * 512 : 1000 * 512 + 8192] == payload
        assert r.dev.flushes == 1 and r.dev.backend.in_flight == 0
        # the write reads back through the device
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 1000)], [8192, 1], in_align=4096)
        r.kick()
        (c,) = r.wait_used(1)
        assert c.data[:-1] == payload
        c = r.dev.accounting.counters
        assert (c["rd_operations"], c["wr_operations"], c["flush_operations"]) == (5, 1, 1)
    finally:
        r.close()


@pytest.mark.parametrize("aio", ["off", "io_uring"])
def test_a_batch_is_one_submission_completed_in_reverse_with_one_interrupt(image, aio) -> None:
    path, data = image
    r = LoopRig(path, aio=aio, event_idx=False)
    try:
        held = r.hold()
        n = 12
        heads = [
            r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], in_align=4096)
            for i in range(n)
        ]
        irqs = r.drv.interrupts
        r.kick()
        assert held.submits == [n]  # the whole ring in one submission
        held.settle(n)
        assert r.q.collect() == [] and r.drv.interrupts == irqs  # nothing acknowledged yet
        held.release()  # all of them, last submitted first
        done = r.wait_used(n)
        assert [c.head for c in done] == heads[::-1]
        for i, c in enumerate(reversed(done)):
            assert c.data[:-1] == data[4096 * i : 4096 * (i + 1)] and c.data[-1] == 0
        assert r.drv.interrupts == irqs + 1  # one per completed batch
    finally:
        r.close()


@pytest.mark.parametrize("aio", ["off", "io_uring"])
def test_a_completed_batch_interrupts_only_when_used_event_asks(image, aio) -> None:
    """EVENT_IDX: a batch whose completions stay short of ``used_event`` raises no interrupt; the
    batch that crosses it raises exactly one (virtio 1.2 §2.7.7.2)."""
    path, _ = image
    r = LoopRig(path, aio=aio, event_idx=True)
    try:
        held = r.hold()

        def batch(n: int) -> None:
            for i in range(n):
                r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], in_align=4096)
            r.kick()
            held.settle(n)
            held.release()

        r.q.set_used_event(9)  # "interrupt me when the used index passes 9"
        irqs = r.drv.interrupts
        batch(6)
        r.wait_used(6)
        assert r.drv.interrupts == irqs  # used index 6: not there yet
        batch(6)
        r.wait_used(6)
        assert r.drv.interrupts == irqs + 1  # used index 6 -> 12 crossed 9: one interrupt
        assert held.submits == [6, 6]
    finally:
        r.close()


@pytest.mark.parametrize(("aio", "direct"), MODES, ids=IDS)
def test_a_flush_is_acknowledged_only_when_the_backend_completed_it(image, aio, direct) -> None:
    path, _ = image
    r = LoopRig(path, aio=aio, direct=direct)
    try:
        held = r.hold()
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_OUT, 0, 8), b"w" * 4096], [1], out_align=4096)
        r.q.add([HDR.pack(BS.VIRTIO_BLK_T_FLUSH, 0, 0)], [1])
        r.kick()
        held.settle(2)
        ops = sorted(q.op for q in held.held)
        assert ops[-1] == FLUSH
        status = r.q.inflight  # the driver's view: both still outstanding
        assert len(status) == 2 and r.q.used_idx() == 0
        flush = [q for q in held.held if q.op == FLUSH]
        held.release(lambda held_: [q for q in held_ if q.op != FLUSH])
        (w,) = r.wait_used(1)
        assert w.data == b"\0"  # the write's status
        time.sleep(0.05)
        assert r.q.used_idx() == 1 and r.dev.flushes == 0  # the flush is still the host's
        held.release(lambda held_: flush)
        (f,) = r.wait_used(1)
        assert f.data == b"\0" and r.dev.flushes == 1
    finally:
        r.close()


@pytest.mark.parametrize("aio", ["off", "native", "io_uring"])
def test_a_driver_faster_than_the_host_waits_in_its_ring(image, aio) -> None:
    """The driver keeps its ring full (it reposts chains whose heads are still in flight: a
    hostile driver may), the host completes half of what it holds per round. At most a
    queue's worth is in flight, nothing is lost, host memory stays flat."""
    path, data = image
    size, rounds = 8, 25
    r = LoopRig(path, aio=aio, direct=aio == "native", queue_size=size)
    try:
        held = r.hold()
        heads = [
            r.q.add(
                [HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], in_align=4096, indirect=True
            )
            for i in range(size)
        ]
        bufs = {h: r.q.inflight[h][1] for h in heads}  # (data, status) of each chain
        posted, done = size, []
        tracemalloc.start()
        r.kick()
        base = tracemalloc.get_traced_memory()[0]
        for k in range(rounds):
            # a full ring more than the device can take: these wait in the avail ring
            for h in heads[: size // 2]:
                r.q.publish(h)
            posted += size // 2
            r.kick()
            assert r.dev.in_flight[0] <= size and held.in_flight <= size
            held.settle(held.in_flight)
            held.release(lambda held_: held_[: size // 2])  # the host finishes half of them
            done += r.wait_used(size // 2)
            assert tracemalloc.get_traced_memory()[0] - base < 512 * 1024, k
        tracemalloc.stop()
        deadline = time.monotonic() + 10
        while len(done) < posted and time.monotonic() < deadline:
            held.settle(held.in_flight)
            held.release()
            done += r.q.collect()
            time.sleep(0.01)
        assert len(done) == posted  # every posted request completed: none lost
        assert held.most_in_flight <= size and max(held.submits) <= size
        assert all(c.length == 4097 for c in done)
        for i, h in enumerate(heads):
            (data_addr, _), (status_addr, _) = bufs[h]
            assert r.mem.read(status_addr, 1) == b"\0"
            assert r.mem.read(data_addr, 4096) == data[4096 * i : 4096 * (i + 1)]
    finally:
        r.close()


def test_a_reset_waits_for_the_kernel_before_dropping_requests(image) -> None:
    path, _ = image
    r = LoopRig(path, aio="io_uring")
    try:
        held = r.hold()
        for i in range(4):
            r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1])
        r.kick()
        assert held.in_flight == 4
        r.t.write(0x70, 4, 0)  # status 0: device reset, from the "vCPU" (this thread)
        assert held.in_flight == 0 and r.dev.in_flight == [0]
        assert r.q.used_idx() == 0  # a reset driver gets nothing back
    finally:
        r.close()


@pytest.mark.parametrize("aio", ["native", "io_uring"])
def test_a_snapshot_freeze_completes_what_is_in_flight(image, aio) -> None:
    """A snapshot keeps rings, not requests: freezing the device (what QMP migrate does first)
    waits for the kernel and answers every request in flight, so the saved used ring has them
    (docs/snapshot.md)."""
    path, data = image
    r = LoopRig(path, aio=aio, direct=aio == "native")
    try:
        held = r.hold()
        for i in range(4):
            r.q.add([HDR.pack(BS.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], in_align=4096)
        r.kick()
        assert held.in_flight == 4 and r.q.used_idx() == 0
        r.on_loop(r.dev.freeze)
        assert held.in_flight == 0 and r.dev.in_flight == [0]
        done = r.q.collect()
        assert r.q.used_idx() == 4 and len(done) == 4
        assert sorted(c.data[:4096] for c in done) == sorted(
            data[4096 * i : 4096 * (i + 1)] for i in range(4)
        )
        assert all(c.data[4096] == 0 for c in done)  # VIRTIO_BLK_S_OK
    finally:
        r.close()


def test_backends_report_errors_as_negative_errno(tmp_path: Path) -> None:
    """A read of a write-only descriptor fails in the kernel: res is -EBADF, nothing raises."""
    mem = GuestMemory.anonymous([(0, MiB)])
    path = tmp_path / "f"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_WRONLY)
    try:
        for mode in ("off", "io_uring"):
            b = open_backend(mode, fd, 4)
            req = IoRequest(0, 0, mem.host_iovec([0], [4096]))
            done = b.submit([req]) + b.drain()
            assert [r.res for r in done] == [-9]
            b.close()
    finally:
        os.close(fd)
        mem.close()


def test_generated_aio_ffi_module_matches_cdef(tmp_path: Path) -> None:
    """``_aio_ffi.py`` (pre-built, so importing the back ends parses no C) follows ``CDEF``."""
    from engine.io import _aio_ffi, aio_sys

    out = tmp_path / "ffi.py"
    aio_sys.write_ffi_module(str(out))
    assert Path(_aio_ffi.__file__).read_text() == out.read_text(), (
        "run: python -m engine.io.aio_sys"
    )
    assert aio_sys.ffi is _aio_ffi.ffi
    parsed = aio_sys.build_ffi()
    for name in ("struct iocb", "struct io_event", "struct io_uring_sqe", "struct io_uring_params"):
        assert aio_sys.ffi.sizeof(name) == parsed.sizeof(name)
    assert (
        aio_sys.ffi.sizeof("struct iocb") == 64 and aio_sys.ffi.sizeof("struct io_uring_sqe") == 64
    )

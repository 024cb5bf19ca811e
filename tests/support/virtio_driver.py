"""A small virtio-mmio driver in Python, so device models are tested without KVM or Linux.

It talks to an ``MmioTransport`` only through ``read``/``write``/``notify``, exactly as a guest
would, and builds its rings and buffers in a real ``GuestMemory`` mapping. It also has a raw
mode (``DriverQueue.put_raw``/``publish``) that writes arbitrary descriptors and ring indices,
which the fuzz tests use to play a hostile driver.
"""

from __future__ import annotations

import ctypes
import struct
import time
import tracemalloc
from dataclasses import dataclass, field

from engine.machine.memory import GuestMemory
from engine.virtio import mmio, mmio_regs
from engine.virtio.device import VIRTIO_F_VERSION_1
from engine.virtio.queue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

DESC = struct.Struct("<QIHH")
S = mmio_regs


class Allocator:
    """Bump allocator over a guest-physical range."""

    def __init__(self, start: int, end: int) -> None:
        self.start = self.cur = start
        self.end = end

    def alloc(self, size: int, align: int = 16) -> int:
        addr = -(-self.cur // align) * align
        if addr + size > self.end:
            raise MemoryError(f"test allocator exhausted ({size:#x} bytes wanted)")
        self.cur = addr + size
        return addr

    def mark(self) -> int:
        return self.cur

    def release(self, mark: int) -> None:
        self.cur = mark


@dataclass
class Completion:
    head: int
    length: int
    data: bytes  # the writable buffers' contents, concatenated (the whole buffers)
    ins: list[tuple[int, int]] = field(default_factory=list)


class DriverQueue:
    """One queue as the driver sees it: descriptor table, avail ring, used ring."""

    def __init__(self, drv: Driver, index: int, size: int) -> None:
        self.drv = drv
        self.mem = drv.mem
        self.index = index
        self.size = size
        a = drv.alloc
        self.desc = a.alloc(16 * size, 4096)
        self.avail = a.alloc(6 + 2 * size, 2)
        self.used = a.alloc(6 + 8 * size, 4096)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.inflight: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        self.kicks = 0

    # -- normal driver operations -----------------------------------------------------------------

    def add(
        self,
        outs: list[bytes],
        ins: list[int],
        *,
        indirect: bool = False,
        in_align: int = 16,
        out_align: int = 16,
    ) -> int:
        """Post a chain: device-readable ``outs`` then device-writable buffers of ``ins`` bytes."""
        mem, a = self.mem, self.drv.alloc
        bufs: list[tuple[int, int, int]] = []
        for data in outs:
            addr = a.alloc(max(1, len(data)), out_align if len(data) >= out_align else 16)
            mem.write(addr, data)
            bufs.append((addr, len(data), 0))
        in_bufs = []
        for n in ins:
            addr = a.alloc(max(1, n), in_align)
            mem.fill(addr, n, 0xEE)
            bufs.append((addr, n, VIRTQ_DESC_F_WRITE))
            in_bufs.append((addr, n))
        if indirect:
            table = a.alloc(16 * len(bufs))
            for i, (addr, n, fl) in enumerate(bufs):
                nxt = i + 1 if i + 1 < len(bufs) else 0
                flags = fl | (VIRTQ_DESC_F_NEXT if i + 1 < len(bufs) else 0)
                mem.write(table + 16 * i, DESC.pack(addr, n, flags, nxt))
            ids = [self.free.pop(0)]
            mem.write(
                self.desc + 16 * ids[0], DESC.pack(table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
            )
        else:
            if len(bufs) > len(self.free):
                raise RuntimeError("driver queue full")
            ids = [self.free.pop(0) for _ in bufs]
            for i, (addr, n, fl) in enumerate(bufs):
                last = i + 1 == len(bufs)
                flags = fl | (0 if last else VIRTQ_DESC_F_NEXT)
                self.mem.write(
                    self.desc + 16 * ids[i], DESC.pack(addr, n, flags, 0 if last else ids[i + 1])
                )
        self.inflight[ids[0]] = (ids, in_bufs)
        self.publish(ids[0])
        return ids[0]

    def publish(self, head: int) -> None:
        """Put ``head`` in the avail ring and bump avail.idx."""
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def kick(self) -> None:
        self.kicks += 1
        self.drv.transport.notify(self.index)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def collect(self) -> list[Completion]:
        """Completions the device has put in the used ring since the last call."""
        out = []
        while self.last_used != self.used_idx():
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            head, length = struct.unpack("<II", self.mem.read(slot, 8))
            self.last_used = (self.last_used + 1) & 0xFFFF
            ids, in_bufs = self.inflight.pop(head, ([head], []))
            data = b"".join(self.mem.read(addr, n) for addr, n in in_bufs)
            self.free.extend(i for i in ids if i not in self.free)
            out.append(Completion(head, length, data, in_bufs))
        return out

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used + 4 + 8 * self.size)

    # -- raw (hostile) operations -------------------------------------------------------------------

    def put_raw(self, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(self.desc + 16 * index, DESC.pack(addr, length, flags, nxt))

    def post_table(self, bufs: list[tuple[int, int, int]]) -> int:
        """Post one chain as an indirect table of raw ``(addr, len, flags)`` entries, linked in
        order (NEXT is added). Hostile tests alias buffers this way: the same guest pages named
        over and over make a chain far longer than guest RAM. Completions carry no data."""
        table = self.drv.alloc.alloc(16 * len(bufs))
        for i, (addr, n, flags) in enumerate(bufs):
            more = i + 1 < len(bufs)
            nxt_flags = flags | (VIRTQ_DESC_F_NEXT if more else 0)
            self.mem.write(table + 16 * i, DESC.pack(addr, n, nxt_flags, i + 1 if more else 0))
        head = self.free.pop(0)
        self.put_raw(head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
        self.inflight[head] = ([head], [])
        self.publish(head)
        return head

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)


class Driver:
    """The transport-level half: reset, negotiate, set up queues, DRIVER_OK."""

    def __init__(self, transport: mmio.MmioTransport, mem: GuestMemory, alloc: Allocator) -> None:
        self.transport = transport
        self.mem = mem
        self.alloc = alloc
        self.interrupts = 0
        transport.set_interrupt(self._irq)
        self.queues: dict[int, DriverQueue] = {}

    def _irq(self) -> None:
        self.interrupts += 1

    def r(self, off: int) -> int:
        return self.transport.read(off, 4)

    def w(self, off: int, value: int) -> None:
        self.transport.write(off, 4, value)

    @property
    def status(self) -> int:
        return self.r(S.STATUS)

    def device_features(self) -> int:
        self.w(S.DEVICE_FEATURES_SEL, 0)
        lo = self.r(S.DEVICE_FEATURES)
        self.w(S.DEVICE_FEATURES_SEL, 1)
        return lo | self.r(S.DEVICE_FEATURES) << 32

    def negotiate(self, want: int | None = None, *, drop: int = 0) -> int:
        """Reset, ACK, DRIVER, accept ``want`` (default: everything offered) minus ``drop``."""
        assert self.r(S.MAGIC) == S.MMIO_MAGIC and self.r(S.VERSION) == 2
        self.w(S.STATUS, 0)
        self.w(S.STATUS, S.STATUS_ACKNOWLEDGE)
        self.w(S.STATUS, S.STATUS_ACKNOWLEDGE | S.STATUS_DRIVER)
        offered = self.device_features()
        acked = (offered if want is None else want & offered) & ~drop
        for page in (0, 1):
            self.w(S.DRIVER_FEATURES_SEL, page)
            self.w(S.DRIVER_FEATURES, acked >> (32 * page) & 0xFFFFFFFF)
        self.w(S.STATUS, S.STATUS_ACKNOWLEDGE | S.STATUS_DRIVER | S.STATUS_FEATURES_OK)
        return acked

    def features_ok(self) -> bool:
        return bool(self.status & S.STATUS_FEATURES_OK)

    def setup_queue(self, index: int, size: int | None = None) -> DriverQueue:
        self.w(S.QUEUE_SEL, index)
        qmax = self.r(S.QUEUE_NUM_MAX)
        assert qmax > 0, f"queue {index} does not exist"
        size = size or qmax
        q = DriverQueue(self, index, size)
        self.w(S.QUEUE_NUM, size)
        for reg, addr in (
            (S.QUEUE_DESC_LOW, q.desc),
            (S.QUEUE_DRIVER_LOW, q.avail),
            (S.QUEUE_DEVICE_LOW, q.used),
        ):
            self.w(reg, addr & 0xFFFFFFFF)
            self.w(reg + 4, addr >> 32)
        self.w(S.QUEUE_READY, 1)
        self.queues[index] = q
        return q

    def driver_ok(self) -> None:
        self.w(S.STATUS, self.status | S.STATUS_DRIVER_OK)

    def config(self, offset: int, size: int) -> int:
        return self.transport.read(S.CONFIG + offset, size)

    def config_bytes(self, offset: int, size: int) -> bytes:
        return bytes(self.transport.read(S.CONFIG + offset + i, 1) for i in range(size))

    def start(
        self, queues: int | list[int] | None = None, *, want: int | None = None, drop: int = 0
    ) -> int:
        """The whole dance: negotiate, set up ``queues`` (default all), DRIVER_OK; returns features."""
        acked = self.negotiate(want, drop=drop)
        assert acked >> VIRTIO_F_VERSION_1 & 1
        assert self.features_ok(), f"device refused features {acked:#x}"
        n = self.transport.num_queues
        idx = range(n) if queues is None else range(queues) if isinstance(queues, int) else queues
        for i in idx:
            self.setup_queue(i)
        self.driver_ok()
        assert self.status & S.STATUS_DRIVER_OK
        return acked

    def ack_interrupt(self) -> int:
        isr = self.r(S.INTERRUPT_STATUS)
        self.w(S.INTERRUPT_ACK, isr)
        return isr


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/self/status has no {field_name}")


_M_MMAP_THRESHOLD = -3  # mallopt(3)
_LIBC = ctypes.CDLL(None)


class HostCost:
    """Peak host memory growth and CPU time of the work done inside ``with`` (on this thread).

    Two measures of the peak, the larger counts: the kernel's (VmHWM, reset by writing 5 to
    /proc/self/clear_refs), so memory allocated and freed inside the block counts, and Python's
    (tracemalloc), which also sees allocations served from memory the process already had.
    glibc's mmap threshold is pinned and its free heap trimmed, so a large allocation always
    gets fresh pages. Guest pages
    the work touches for the first time count too: touch guest memory before measuring.
    """

    peak_mib: float = 0.0
    cpu_s: float = 0.0

    def __init__(self, *, trace: bool = True) -> None:
        """``trace=False``: the kernel's measure only (cheap enough for every fuzz case;
        allocations under glibc's 128 KiB mmap threshold may go unseen)."""
        self.trace = trace

    def __enter__(self) -> HostCost:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        # free heap chunks left by earlier work are still resident: reusing one would cost no
        # new pages; trimming hands their pages back, so any reuse shows up in VmHWM again
        _LIBC.malloc_trim(0)
        self._own_trace = self.trace and not tracemalloc.is_tracing()
        if self._own_trace:
            tracemalloc.start()
        if self.trace:
            tracemalloc.reset_peak()
            self._traced = tracemalloc.get_traced_memory()[0]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self._rss = _status_kib("VmRSS")
        self._t = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = time.thread_time() - self._t
        rss_kib = _status_kib("VmHWM") - self._rss
        traced = tracemalloc.get_traced_memory()[1] - self._traced if self.trace else 0
        if self._own_trace:
            tracemalloc.stop()
        self.peak_mib = max(rss_kib / 1024, traced / (1 << 20))

"""virtio-blk (virtio 1.2 §5.2) over a raw file or block device, the kernel doing the I/O.

A kick pops every request the ring holds (each chain through the queue's validator, each
request's header, range and size checked here), hands the reads, writes and flushes to the
drive's back end in one batch (``engine/io``: ``aio`` off, native or io_uring), and completes
them as the back end reports them, in whatever order the kernel finishes them: the status byte
and the used entry of a request are written only after its I/O completed (a write after the
host write returned, a flush after ``fdatasync``), and the driver gets one interrupt per batch
of completions (EVENT_IDX decides whether it wants it). Data moves straight between the file
and guest memory (host iovecs made and checked by ``GuestMemory``), never on a vCPU thread.

What one request may cost the host: ``seg_max * size_max`` data bytes (``max_request``; more
fails with IOERR), at most 1024 buffers. What a queue may have in flight: its size; a driver
that posts faster than the host completes waits in its ring (the device pops again as requests
complete), so nothing is dropped and memory stays bounded. I/O errors the host sees are logged
in the operator's terms (``blk_errors``) and the guest gets IOERR.

``direct`` opens the file O_DIRECT (buffers it cannot take go through ``blk_sync``'s bounce
buffer); ``readonly`` offers VIRTIO_BLK_F_RO and fails writes; ``discard`` offers DISCARD and
WRITE_ZEROES, served by punching holes, when the file system can; ``iops_total`` is a token
bucket: when it is empty the device stops popping and a timer resumes it.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from dataclasses import dataclass

from engine.errors import HostError
from engine.hostfiles import open_host_file
from engine.io import FLUSH, READ, WRITE, Backend, IoRequest, open_backend
from engine.virtio.blk_accounting import BlkAccounting
from engine.virtio.blk_errors import BlkProfile, ErrorLog, backend_refused
from engine.virtio.blk_sync import SyncPath
from engine.virtio.device import VIRTIO_ID_BLOCK, Loop, VirtioDevice, bit
from engine.virtio.iov import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    IOV_MAX,
    fallocate,
)
from engine.virtio.queue import DescriptorChain
from engine.virtio.throttle import RateTimer, TokenBucket

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

SECTOR = 512
ID_BYTES = 20
SIZE_MAX = 1 << 20  # largest single buffer we advertise
MAX_DISCARD_SECTORS = 0x3F_FFFF  # 2 GiB per discard / write-zeroes request

#: request type -> QEMU accounting kind (write-zeroes is a write, discard an unmap, as QEMU)
_ACCOUNTED = {
    VIRTIO_BLK_T_IN: "rd",
    VIRTIO_BLK_T_OUT: "wr",
    VIRTIO_BLK_T_FLUSH: "flush",
    VIRTIO_BLK_T_DISCARD: "unmap",
    VIRTIO_BLK_T_WRITE_ZEROES: "wr",
}
_KIND = {READ: "rd", WRITE: "wr", FLUSH: "flush"}
_HDR = struct.Struct("<IIQ")
_SEG = struct.Struct("<QII")  # discard / write-zeroes segment: sector, num_sectors, flags
_CONFIG = struct.Struct("<QII4xI8xBxHIIIIIB3x")


def _kib(r: IoRequest) -> int:
    return r.length >> 10 if isinstance(r, BlkRequest) else -1


class BlkRequest(IoRequest):
    """A read, write or flush on its way through the back end, with what completing it needs."""

    __slots__ = ("chain", "length", "queue", "t0")

    def __init__(self, op: int, offset: int, iov: object, chain: DescriptorChain, queue: int,
                 length: int) -> None:  # fmt: skip
        IoRequest.__init__(self, op, offset, iov)  # type: ignore[arg-type]
        self.chain, self.queue, self.length = chain, queue, length
        self.t0 = time.perf_counter_ns()


@dataclass(frozen=True, slots=True)
class BlkState:
    """The disk size the guest's driver read at probe: a restore needs the same (StratoVirt:
    "only the previous file or a copy of it")."""

    capacity: int


class Blk(VirtioDevice):
    """One virtio-blk device; ``num_queues`` > 1 offers VIRTIO_BLK_F_MQ."""

    device_id = VIRTIO_ID_BLOCK
    state_type = BlkState

    def __init__(
        self,
        name: str,
        path: str,
        *,
        readonly: bool = False,
        direct: bool = False,
        aio: str = "off",
        discard: bool = False,
        serial: str = "",
        iops_total: int | None = None,
        num_queues: int = 1,
        queue_size: int = 256,
        loop: Loop | None = None,
    ) -> None:
        if not 1 <= num_queues <= 32:
            raise HostError(
                f"virtio-blk {name}: num-queues {num_queues} is outside 1..32", hint="use 1..32"
            )
        serial_b = serial.encode()
        if len(serial_b) > ID_BYTES:
            raise HostError(
                f"virtio-blk {name}: serial {serial!r} is {len(serial_b)} bytes, limit {ID_BYTES}",
                hint="shorten the serial",
            )
        # the manifest's own host-file check (never blocks: a FIFO or /proc file is refused)
        self.fd = open_host_file(
            path, what=f"virtio-blk {name}: drive", write=not readonly, direct=direct
        )
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            self.backend: Backend = open_backend(aio, self.fd, num_queues * queue_size)
        except OSError as e:
            os.close(self.fd)
            if isinstance(e, HostError):
                raise
            raise backend_refused(name, path, aio, e) from None
        self.path, self.readonly, self.direct, self.aio = path, readonly, direct, aio
        self.serial = serial_b
        self.capacity = self.size // SECTOR
        self.sync = SyncPath(self.fd, direct)
        self.errors = ErrorLog(name, path)
        self.can_punch = discard and not readonly and self._probe_punch_hole()
        features = (
            bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
        )
        if readonly:
            features |= bit(VIRTIO_BLK_F_RO)
        if num_queues > 1:
            features |= bit(VIRTIO_BLK_F_MQ)
        if self.can_punch:
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        super().__init__(name, [queue_size] * num_queues, features, loop=loop)
        self.config = bytearray(
            _CONFIG.pack(
                self.capacity,
                SIZE_MAX,
                queue_size - 2,  # seg_max: leave room for header and status (Firecracker)
                SECTOR,
                0,  # writeback
                num_queues,
                MAX_DISCARD_SECTORS,
                1,  # max_discard_seg
                1,  # discard_sector_alignment (sectors)
                MAX_DISCARD_SECTORS,
                1,  # max_write_zeroes_seg
                1,  # write_zeroes_may_unmap
            )
        )
        #: the most data bytes one request may move: seg_max segments of size_max
        self.max_request = max(1, queue_size - 2) * SIZE_MAX
        self.bucket = TokenBucket(iops_total, max(1.0, iops_total / 10)) if iops_total else None
        self._timer = RateTimer(self.lock, self._unthrottle)
        self._throttled: set[int] = set()
        self._throttled_since = 0.0
        self.flushes = 0
        self.accounting = BlkAccounting()
        #: requests each queue has in the back end (at most the queue's size)
        self.in_flight = [0] * num_queues
        self._full: set[int] = set()  # queues that stopped popping at that bound
        self._watching = False
        #: ``SVLAUNCH_BLK_STATS=1``: batch sizes, wake-ups and latencies, logged at close
        self.profile = BlkProfile(name, aio) if os.environ.get("SVLAUNCH_BLK_STATS") else None

    def _probe_punch_hole(self) -> bool:
        """Punch a hole past EOF (KEEP_SIZE: touches no data) to learn if the file system can."""
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, self.size, 4096)
        except OSError:
            return False
        return True

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_activate(self) -> None:
        if self.bucket is not None:
            self._timer.start(self.loop)
        if self.backend.event_fd is not None and self.loop is not None and not self._watching:
            self.on_loop(self._watch)

    def _watch(self) -> None:
        efd = self.backend.event_fd
        if efd is not None and self.loop is not None and not self._watching and self.fd >= 0:
            self.loop.add_reader(efd, lambda: self.guarded(self._on_completions))
            self._watching = True

    def on_reset(self) -> None:
        self._timer.cancel()
        self._throttled.clear()
        self.quiesce()
        self._full.clear()

    def quiesce(self) -> None:
        """Wait until the back end has nothing in flight; the requests it held are dropped
        (a reset: the driver forgets them). Their I/O is finished before guest memory can go."""
        with self.lock:
            self.backend.drain()
            self.in_flight = [0] * len(self.in_flight)

    def close(self) -> None:
        self._timer.close()
        if self.fd < 0:
            return
        if self.profile is not None:
            self.profile.log()
        efd = self.backend.event_fd
        if self._watching and efd is not None and self.loop is not None:
            self.loop.remove_reader(efd)
            self._watching = False
        with self.lock:
            self.backend.close()
        os.close(self.fd)
        self.fd = -1
        self.sync.close()

    # -- snapshot (engine/snapshot/) ---------------------------------------------------------------

    def on_freeze(self) -> None:
        """A snapshot keeps rings, not requests: what the back end has in flight completes
        first (its status and used entry are in guest memory, its interrupt raised, before the
        state is taken). Lock held. ``thaw`` then pops what the full queues left in the ring."""
        done = self.backend.drain() if self.backend.in_flight else []
        for i in self._complete(done):
            self.signal(i)

    def snapshot_state(self) -> BlkState:
        return BlkState(self.capacity)

    def restore_state(self, state: BlkState) -> None:
        if state.capacity != self.capacity:  # checked before the build too (engine/snapshot)
            raise HostError(
                f"virtio-blk {self.name}: {self.path} has {self.capacity} sectors, the snapshot's "
                f"disk had {state.capacity}",
                hint="restore with the drive file the snapshot was taken with (or a copy)",
            )

    # -- queue processing --------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        if self.profile is not None:
            self.profile.event(f"q{index} kick")
        q = self.queues[index]
        if not q.active or index in self._throttled:
            return
        bucket = self.bucket
        room = q.size - self.in_flight[index]
        batch: list[BlkRequest] = []
        while room > 0 and (chain := q.pop()) is not None:
            if bucket is not None:
                wait = bucket.take(1)
                if wait:
                    q.undo_pop()
                    self._throttle(index, wait)
                    break
            req = self._start(chain, index)
            if req is not None:
                batch.append(req)
                room -= 1
        else:
            if room <= 0:
                self._full.add(index)  # popped again as requests complete
        if batch:
            self.in_flight[index] += len(batch)
            if self.profile is not None:
                self.profile.batches.append(len(batch))
                self.profile.event(
                    f"q{index} submit " + ",".join(f"{r.op}:{r.length >> 10}k" for r in batch)
                )
            done = self.backend.submit(list[IoRequest](batch))
            if self.loop is None and self.backend.in_flight:
                done += self.backend.drain()  # no loop to wake us (unit tests): wait here
            touched = self._complete(done)
            touched.discard(index)
            for i in touched:
                self.signal(i)
        self.signal(index)

    def _on_completions(self) -> None:
        """The back end's eventfd fired: complete what finished, one interrupt per queue."""
        done = self.backend.reap()
        if self.profile is not None:
            self.profile.wakes.append(len(done))
            self.profile.event("wake " + ",".join(f"{r.op}:{_kib(r)}k" for r in done))
        for i in self._complete(done):
            self.signal(i)
        for i in sorted(self._full):
            if self.in_flight[i] < self.queues[i].size:
                self._full.discard(i)
                self.process_queue(i)

    def _complete(self, done: list[IoRequest]) -> set[int]:
        """Status and used entry for each completed request; the queues they belong to."""
        touched: set[int] = set()
        for r in done:
            assert isinstance(r, BlkRequest)
            self.in_flight[r.queue] -= 1
            touched.add(r.queue)
            self._finish(r)
        return touched

    def _throttle(self, index: int, wait: float) -> None:
        if not self._throttled:
            self._throttled_since = time.monotonic()
        self._throttled.add(index)
        if not self._timer.arm(wait):  # no loop (unit tests without one): wait inline
            time.sleep(wait)
            self._unthrottle_locked()

    def _unthrottle(self) -> None:
        with self.lock:
            self._unthrottle_locked()

    def _unthrottle_locked(self) -> None:
        self.stats.throttled_s += time.monotonic() - self._throttled_since
        queues = sorted(self._throttled)
        self._throttled.clear()
        for i in queues:
            self.guarded(self.process_queue, i)

    # -- one request -------------------------------------------------------------------------------

    def _start(self, chain: DescriptorChain, index: int) -> BlkRequest | None:
        """Check one request; a read, write or flush for the back end, or None when it is
        already answered (refused, GET_ID, discard, a transfer the back end cannot take)."""
        mem = self.mem
        assert mem is not None
        self.stats.requests += 1
        wlen = chain.writable_len
        if wlen < 1:
            self.stats.errors += 1
            self.queues[index].add_used(chain, 0)  # nowhere to put a status
            return None
        if chain.readable_len < _HDR.size:
            self._answer(chain, index, VIRTIO_BLK_S_IOERR)
            return None
        rtype, _, sector = _HDR.unpack(chain.read(mem, 0, _HDR.size))
        if rtype == VIRTIO_BLK_T_IN:
            n = wlen - 1
            if n > self.max_request or not self._in_range(sector, n):
                self._refused(chain, index, "rd")
                return None
            iov = chain.host_iovec(mem, True, 0, n)
            if self._backend_can(iov, sector, n):
                return BlkRequest(READ, sector * SECTOR, iov, chain, index, n)
            self._now(chain, index, READ, sector * SECTOR, n)
            return None
        if rtype == VIRTIO_BLK_T_OUT:
            n = chain.readable_len - _HDR.size
            if self.readonly or n > self.max_request or not self._in_range(sector, n):
                self._refused(chain, index, "wr")
                return None
            iov = chain.host_iovec(mem, False, _HDR.size, n)
            if self._backend_can(iov, sector, n):
                return BlkRequest(WRITE, sector * SECTOR, iov, chain, index, n)
            self._now(chain, index, WRITE, sector * SECTOR, n)
            return None
        if rtype == VIRTIO_BLK_T_FLUSH:
            if self.readonly:  # nothing of ours to make durable
                self.accounting.record("flush", ok=True, failed=False, nbytes=0, end=0, ns=0)
                self._answer(chain, index, VIRTIO_BLK_S_OK)
                return None
            return BlkRequest(FLUSH, 0, None, chain, index, 0)
        if rtype == VIRTIO_BLK_T_GET_ID:
            n = min(ID_BYTES, wlen - 1)
            chain.write(mem, self.serial.ljust(ID_BYTES, b"\0")[:n])
            self._answer(chain, index, VIRTIO_BLK_S_OK, n)
            return None
        if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES) and self.can_punch:
            self._discard(chain, index, rtype)
            return None
        self._answer(chain, index, VIRTIO_BLK_S_UNSUPP)
        return None

    def _backend_can(self, iov: object, sector: int, length: int) -> bool:
        """One iovec array of at most IOV_MAX entries, aligned for O_DIRECT when direct."""
        count, total = iov.count, iov.total  # type: ignore[attr-defined]
        if not 0 < count <= IOV_MAX or total != length:
            return False
        a = self.sync.align
        return not self.direct or (not (sector * SECTOR) % a and iov.aligned(a))  # type: ignore[attr-defined]

    def _in_range(self, sector: int, length: int) -> bool:
        if length % SECTOR:
            return False
        return sector <= self.capacity and sector + length // SECTOR <= self.capacity

    def _answer(self, chain: DescriptorChain, index: int, status: int, data_len: int = 0) -> None:
        """Write the status byte (the chain's last writable byte) and return the chain."""
        assert self.mem is not None
        if status != VIRTIO_BLK_S_OK:
            self.stats.errors += 1
        chain.write(self.mem, bytes([status]), chain.writable_len - 1)
        self.queues[index].add_used(chain, data_len + 1)

    def _refused(
        self, chain: DescriptorChain, index: int, kind: str, status: int = VIRTIO_BLK_S_IOERR
    ) -> None:
        """A request the device refuses before any I/O (QEMU counts it as invalid)."""
        self.accounting.record(kind, ok=False, failed=False, nbytes=0, end=0, ns=0)
        self._answer(chain, index, status)

    def _now(self, chain: DescriptorChain, index: int, op: int, offset: int, n: int) -> None:
        """A transfer the back end cannot take, done here and now (``blk_sync``)."""
        req = BlkRequest(op, offset, None, chain, index, n)
        req.res = self._sync_rest(req, 0)
        self._finish(req)

    def _sync_rest(self, req: BlkRequest, done: int) -> int:
        """Move bytes ``[done, length)`` of ``req`` through the synchronous path; ``res``."""
        mem = self.mem
        assert mem is not None
        chain, n = req.chain, req.length - done
        try:
            if req.op == READ:
                self.sync.rw(False, req.offset + done, chain.write_views(mem, done, n))
            else:
                self.sync.rw(True, req.offset + done, chain.read_views(mem, _HDR.size + done, n))
        except OSError as e:
            if e.errno == errno.EINVAL and self.direct and self.sync.align < 4096:
                self.sync.align = 4096  # the file system wants page alignment: bounce from now on
                return self._sync_rest(req, done)
            return -(e.errno or errno.EIO)
        return req.length

    def _finish(self, req: BlkRequest) -> None:
        """The back end is done with ``req``: its status, used entry and accounting."""
        res, op = req.res, req.op
        if op != FLUSH and 0 <= res < req.length:  # short: end of file, a full disk...
            res = self._sync_rest(req, res)
        elif res in (-errno.EINVAL, -errno.EAGAIN) and op != FLUSH and self.direct:
            res = self._sync_rest(req, 0)  # refused by O_DIRECT or out of AIO resources
        ok = res >= 0
        if ok:
            if op == READ:
                self.stats.bytes_out += req.length
            elif op == WRITE:
                self.stats.bytes_in += req.length
            else:
                self.flushes += 1
        else:
            self.errors.report(op, req.offset, req.length, -res)
        end = req.offset + req.length if op == WRITE else 0
        ns = time.perf_counter_ns() - req.t0
        if self.profile is not None:
            self.profile.latency_ns.append(ns)
            self.profile.event(f"done {op}:{req.length >> 10}k res={res} in {ns // 1000}us")
        self.accounting.record(_KIND[op], ok=ok, failed=not ok, nbytes=req.length, end=end, ns=ns)
        self._answer(
            req.chain,
            req.queue,
            VIRTIO_BLK_S_OK if ok else VIRTIO_BLK_S_IOERR,
            req.length if ok and op == READ else 0,
        )

    def _discard(self, chain: DescriptorChain, index: int, rtype: int) -> None:
        assert self.mem is not None
        kind = _ACCOUNTED[rtype]
        data_out = chain.readable_len - _HDR.size
        if self.readonly:
            self._refused(chain, index, kind)
            return None
        if data_out != _SEG.size:  # max_discard_seg = max_write_zeroes_seg = 1
            self._refused(chain, index, kind, VIRTIO_BLK_S_UNSUPP)
            return None
        sector, count, flags = _SEG.unpack(chain.read(self.mem, _HDR.size, _SEG.size))
        if flags & ~1 or (rtype == VIRTIO_BLK_T_DISCARD and flags):
            self._refused(chain, index, kind, VIRTIO_BLK_S_UNSUPP)
            return None
        if not self._in_range(sector, count * SECTOR):
            self._refused(chain, index, kind)
            return None
        mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        if rtype == VIRTIO_BLK_T_WRITE_ZEROES and not flags:
            mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE
        offset, length = sector * SECTOR, count * SECTOR
        t0 = time.perf_counter_ns()
        try:
            try:
                fallocate(self.fd, mode, offset, length)
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP or mode & FALLOC_FL_PUNCH_HOLE:
                    raise
                fallocate(self.fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)
        except OSError as e:
            self.errors.report(rtype, offset, length, e.errno or errno.EIO)
            self.accounting.record(kind, ok=False, failed=True, nbytes=0, end=0, ns=0)
            self._answer(chain, index, VIRTIO_BLK_S_IOERR)
            return None
        end = offset + length if kind == "wr" else 0
        ns = time.perf_counter_ns() - t0
        self.accounting.record(kind, ok=True, failed=False, nbytes=length, end=end, ns=ns)
        self._answer(chain, index, VIRTIO_BLK_S_OK)

"""virtio-blk (virtio 1.2 §5.2) over a raw file or block device.

Data moves straight between the file and guest memory: one preadv/pwritev per request over a
host iovec array of the chain's buffers (``DescriptorChain.host_iovec``, made and checked by
``GuestMemory``), on the device's event loop (the main loop or its iothread), never on a vCPU
thread. One request moves at most ``seg_max * size_max`` data bytes, the limits the config
space advertises (a larger one fails with IOERR), and costs Python work per buffer, of which a
chain has at most 1024: that is what a guest can make the host do per request.

With ``direct`` the file is opened O_DIRECT; guest buffers that are not aligned for it go
through a page-aligned bounce buffer (read-modify-write at unaligned edges). ``readonly`` opens
the file O_RDONLY, offers VIRTIO_BLK_F_RO and fails writes with IOERR. ``discard`` offers
DISCARD and WRITE_ZEROES, served by punching holes (fallocate), when the file system can punch
them; without it the guest sees neither, as on StratoVirt v2.2. ``iops_total`` is a token
bucket: when it is empty the device stops popping and a timer resumes it, so requests wait in
the ring and are never dropped.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time

from engine.errors import HostError
from engine.hostfiles import open_host_file
from engine.virtio.blk_accounting import BlkAccounting
from engine.virtio.device import VIRTIO_ID_BLOCK, Loop, VirtioDevice, bit
from engine.virtio.iov import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    IOV_MAX,
    copy_in,
    copy_out,
    fallocate,
    preadv_full,
    preadv_raw,
    pwritev_full,
    pwritev_raw,
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
BOUNCE_SIZE = 1 << 20

#: request type -> QEMU accounting kind (write-zeroes is a write, discard an unmap, as QEMU)
_ACCOUNTED = {
    VIRTIO_BLK_T_IN: "rd",
    VIRTIO_BLK_T_OUT: "wr",
    VIRTIO_BLK_T_FLUSH: "flush",
    VIRTIO_BLK_T_DISCARD: "unmap",
    VIRTIO_BLK_T_WRITE_ZEROES: "wr",
}
_HDR = struct.Struct("<IIQ")
_SEG = struct.Struct("<QII")  # discard / write-zeroes segment: sector, num_sectors, flags
_CONFIG = struct.Struct("<QII4xI8xBxHIIIIIB3x")


class Blk(VirtioDevice):
    """One virtio-blk device; ``num_queues`` > 1 offers VIRTIO_BLK_F_MQ."""

    device_id = VIRTIO_ID_BLOCK

    def __init__(
        self,
        name: str,
        path: str,
        *,
        readonly: bool = False,
        direct: bool = False,
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
        self.path = path
        self.readonly = readonly
        self.direct = direct
        self.serial = serial_b
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.capacity = self.size // SECTOR
        self.align = SECTOR
        self._bounce: mmap.mmap | None = None
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
        self._last_status, self._io_failed = -1, False

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

    def on_reset(self) -> None:
        self._timer.cancel()
        self._throttled.clear()

    def close(self) -> None:
        self._timer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._bounce is not None:
            self._bounce.close()

    # -- queue processing --------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        if not q.active or index in self._throttled:
            return
        mem = self.mem
        assert mem is not None
        bucket = self.bucket
        while (chain := q.pop()) is not None:
            if bucket is not None:
                wait = bucket.take(1)
                if wait:
                    q.undo_pop()
                    self._throttle(index, wait)
                    break
            q.add_used(chain, self._served(chain))
        self.signal(index)

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

    def _served(self, chain: DescriptorChain) -> int:
        """``_serve`` with QEMU's per-operation accounting (``engine/virtio/blk_accounting.py``)."""
        mem = self.mem
        assert mem is not None
        kind, nbytes, end = None, 0, 0
        if chain.readable_len >= _HDR.size and chain.writable_len >= 1:
            rtype, _, sector = _HDR.unpack(chain.read(mem, 0, _HDR.size))
            kind = _ACCOUNTED.get(rtype)
            if rtype == VIRTIO_BLK_T_IN:
                nbytes = chain.writable_len - 1
            elif rtype == VIRTIO_BLK_T_OUT:
                nbytes = chain.readable_len - _HDR.size
                end = sector * SECTOR + nbytes
            elif kind is not None and chain.readable_len - _HDR.size == _SEG.size:
                first, count, _ = _SEG.unpack(chain.read(mem, _HDR.size, _SEG.size))
                nbytes, end = count * SECTOR, (first + count) * SECTOR
        self._last_status, self._io_failed = -1, False
        t0 = time.perf_counter_ns()
        used = self._serve(chain)
        if kind is not None and self._last_status >= 0:
            ok = self._last_status == VIRTIO_BLK_S_OK
            ns = time.perf_counter_ns() - t0
            self.accounting.record(
                kind, ok=ok, failed=self._io_failed, nbytes=nbytes, end=end, ns=ns
            )
        return used

    def _serve(self, chain: DescriptorChain) -> int:
        """Do one request; returns the used length (data written to the guest + status byte)."""
        mem = self.mem
        assert mem is not None
        self.stats.requests += 1
        if chain.writable_len < 1:
            self.stats.errors += 1
            return 0  # nowhere to put a status: nothing we can tell the driver
        if chain.readable_len < _HDR.size:
            return self._status(chain, VIRTIO_BLK_S_IOERR, 0)
        rtype, _, sector = _HDR.unpack(chain.read(mem, 0, _HDR.size))
        data_in = chain.writable_len - 1
        data_out = chain.readable_len - _HDR.size
        if max(data_in, data_out) > self.max_request:  # more than seg_max * size_max
            return self._status(chain, VIRTIO_BLK_S_IOERR, 0)
        try:
            if rtype == VIRTIO_BLK_T_IN:
                if not self._in_range(sector, data_in):
                    return self._status(chain, VIRTIO_BLK_S_IOERR, 0)
                if not self._rw_iovec(False, sector * SECTOR, chain, 0, data_in):
                    self._rw(False, sector * SECTOR, chain.write_views(mem, 0, data_in))
                self.stats.bytes_out += data_in
                return self._status(chain, VIRTIO_BLK_S_OK, data_in)
            if rtype == VIRTIO_BLK_T_OUT:
                if self.readonly or not self._in_range(sector, data_out):
                    return self._status(chain, VIRTIO_BLK_S_IOERR, 0)
                if not self._rw_iovec(True, sector * SECTOR, chain, _HDR.size, data_out):
                    self._rw(True, sector * SECTOR, chain.read_views(mem, _HDR.size, data_out))
                self.stats.bytes_in += data_out
                return self._status(chain, VIRTIO_BLK_S_OK, 0)
            if rtype == VIRTIO_BLK_T_FLUSH:
                if not self.readonly:
                    os.fdatasync(self.fd)
                    self.flushes += 1
                return self._status(chain, VIRTIO_BLK_S_OK, 0)
            if rtype == VIRTIO_BLK_T_GET_ID:
                n = min(ID_BYTES, data_in)
                chain.write(mem, self.serial.ljust(ID_BYTES, b"\0")[:n])
                return self._status(chain, VIRTIO_BLK_S_OK, n)
            if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES) and self.can_punch:
                status = self._discard(chain, rtype, data_out)
                return self._status(chain, status, 0)
        except OSError as e:
            if e.errno == errno.EINVAL and self.direct and self.align < 4096:
                self.align = 4096  # the file system wants page alignment: bounce from now on
                return self._serve_again(chain)
            self.stats.errors += 1
            self._io_failed = True
            return self._status(chain, VIRTIO_BLK_S_IOERR, 0)
        return self._status(chain, VIRTIO_BLK_S_UNSUPP, 0)

    def _serve_again(self, chain: DescriptorChain) -> int:
        self.stats.requests -= 1
        return self._serve(chain)

    def _in_range(self, sector: int, length: int) -> bool:
        if length % SECTOR:
            return False
        return sector <= self.capacity and sector + length // SECTOR <= self.capacity

    def _status(self, chain: DescriptorChain, status: int, data_len: int) -> int:
        """Write the status byte (the chain's last writable byte) and return the used length."""
        assert self.mem is not None
        self._last_status = status
        if status != VIRTIO_BLK_S_OK:
            self.stats.errors += 1
        chain.write(self.mem, bytes([status]), chain.writable_len - 1)
        return data_len + 1

    def _discard(self, chain: DescriptorChain, rtype: int, data_out: int) -> int:
        assert self.mem is not None
        if self.readonly:
            return VIRTIO_BLK_S_IOERR
        if data_out != _SEG.size:  # max_discard_seg = max_write_zeroes_seg = 1
            return VIRTIO_BLK_S_UNSUPP
        sector, count, flags = _SEG.unpack(chain.read(self.mem, _HDR.size, _SEG.size))
        if flags & ~1 or (rtype == VIRTIO_BLK_T_DISCARD and flags):
            return VIRTIO_BLK_S_UNSUPP
        if not self._in_range(sector, count * SECTOR):
            return VIRTIO_BLK_S_IOERR
        mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        if rtype == VIRTIO_BLK_T_WRITE_ZEROES and not flags:
            mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE
        try:
            fallocate(self.fd, mode, sector * SECTOR, count * SECTOR)
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP or mode & FALLOC_FL_PUNCH_HOLE:
                raise
            fallocate(
                self.fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, sector * SECTOR, count * SECTOR
            )
        return VIRTIO_BLK_S_OK

    # -- data path ---------------------------------------------------------------------------------

    def _rw_iovec(
        self, write: bool, offset: int, chain: DescriptorChain, skip: int, length: int
    ) -> bool:
        """The whole transfer in one preadv/pwritev over a host iovec array (no view per page).

        False when the view path must do it: more than IOV_MAX pieces (a buffer that spans
        adjacent regions is two), O_DIRECT alignment is not met, or the transfer came up short
        (end of file).
        """
        assert self.mem is not None
        iov = chain.host_iovec(self.mem, not write, skip, length)
        if not 0 < iov.count <= IOV_MAX or iov.total != length:
            return False
        if self.direct and (offset % self.align or not iov.aligned(self.align)):
            return False
        io = pwritev_raw if write else preadv_raw
        return io(self.fd, iov.data, iov.count, offset) == iov.total

    def _rw(self, write: bool, offset: int, views: list[memoryview]) -> None:
        if self.direct and not self._aligned(offset, views):
            self._bounced(write, offset, views)
            return
        if write:
            pwritev_full(self.fd, views, offset)
        else:
            n = preadv_full(self.fd, views, offset)
            want = sum(map(len, views))
            if n < want:  # file shrank under us: the rest of the request is zeros
                copy_in(views, n, memoryview(bytes(want - n)))

    def _aligned(self, offset: int, views: list[memoryview]) -> bool:
        a = self.align
        if offset % a:
            return False
        for v in views:
            if len(v) % a or ctypes.addressof(ctypes.c_char.from_buffer(v)) % a:
                return False
        return True

    def _bounced(self, write: bool, offset: int, views: list[memoryview]) -> None:
        """O_DIRECT I/O through a page-aligned buffer, in chunks, read-modify-write at the edges."""
        if self._bounce is None:
            self._bounce = mmap.mmap(-1, BOUNCE_SIZE + 2 * 4096)
        a = self.align
        total = sum(len(v) for v in views)
        pos = 0
        while pos < total:
            n = min(BOUNCE_SIZE, total - pos)
            start = offset + pos
            a0 = start - start % a
            a1 = -(-(start + n) // a) * a
            buf = memoryview(self._bounce)[: a1 - a0]
            head = start - a0
            try:
                if write:
                    if head or a1 != start + n:
                        got = preadv_full(self.fd, [buf], a0)
                        if got < len(buf):
                            buf[got:] = bytes(len(buf) - got)
                    copy_out(views, pos, buf[head : head + n])
                    pwritev_full(self.fd, [buf], a0)
                else:
                    got = preadv_full(self.fd, [buf], a0)
                    if got < len(buf):
                        buf[got:] = bytes(len(buf) - got)
                    copy_in(views, pos, buf[head : head + n])
            finally:
                buf.release()
            pos += n

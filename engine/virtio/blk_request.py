"""virtio-blk, one request: its checks (header, type, range, size), the synchronous paths
(a transfer the back end cannot take, discard and write-zeroes) and its completion (status
byte, used entry, accounting).

Split from ``blk.py`` at the request boundary: the device (``Blk``) owns queues, batching,
the back end, throttling and lifecycle; this base class owns what happens to one chain, so a
reviewer reads every check a guest request meets in one place. ``Blk`` inherits these
methods (no wrapper, no extra call on the data path).
"""

from __future__ import annotations

import errno
import struct
import time

from engine.io import FLUSH, READ, WRITE, IoRequest
from engine.virtio.blk_accounting import BlkAccounting
from engine.virtio.blk_errors import BlkProfile, ErrorLog
from engine.virtio.blk_spec import (
    ID_BYTES,
    SECTOR,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from engine.virtio.blk_sync import SyncPath
from engine.virtio.device import VirtioDevice
from engine.virtio.iov import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    IOV_MAX,
    fallocate,
)
from engine.virtio.queue import DescriptorChain

#: defined here, not imported: ``_HDR.unpack`` then compiles to LOAD_METHOD (no bound method
#: per request), as before the split
_HDR = struct.Struct("<IIQ")  # §5.2.6 struct virtio_blk_req: type, reserved, sector
_SEG = struct.Struct("<QII")  # discard / write-zeroes segment: sector, num_sectors, flags

#: request type -> QEMU accounting kind (write-zeroes is a write, discard an unmap, as QEMU)
_ACCOUNTED = {
    VIRTIO_BLK_T_IN: "rd",
    VIRTIO_BLK_T_OUT: "wr",
    VIRTIO_BLK_T_FLUSH: "flush",
    VIRTIO_BLK_T_DISCARD: "unmap",
    VIRTIO_BLK_T_WRITE_ZEROES: "wr",
}
_KIND = {READ: "rd", WRITE: "wr", FLUSH: "flush"}


class BlkRequest(IoRequest):
    """A read, write or flush on its way through the back end, with what completing it needs."""

    __slots__ = ("chain", "length", "queue", "t0")

    def __init__(self, op: int, offset: int, iov: object, chain: DescriptorChain, queue: int,
                 length: int) -> None:  # fmt: skip
        IoRequest.__init__(self, op, offset, iov)  # type: ignore[arg-type]
        self.chain, self.queue, self.length = chain, queue, length
        self.t0 = time.perf_counter_ns()


class BlkRequests(VirtioDevice):
    """The per-request half of ``Blk``; the attributes below are set by ``Blk.__init__``."""

    fd: int
    readonly: bool
    direct: bool
    serial: bytes
    capacity: int
    max_request: int
    can_punch: bool
    flushes: int
    sync: SyncPath
    errors: ErrorLog
    accounting: BlkAccounting
    profile: BlkProfile | None

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

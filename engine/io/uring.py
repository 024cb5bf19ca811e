"""``aio = "io_uring"``: an io_uring of the drive's own, driven through its shared rings.

Set-up (``io_uring_setup``, then ``io_uring_register``) before the ring may run anything:

- the ring starts disabled (``IORING_SETUP_R_DISABLED``), gets the drive as its only registered
  file, the completion eventfd, and restrictions (``IORING_REGISTER_RESTRICTIONS``): only
  readv/writev/read/write/fsync, and every submission must name the registered file
  (``IOSQE_FIXED_FILE`` required). The kernel runs io_uring operations past seccomp, so this is
  what keeps the ring to this one drive's data; then ``IORING_REGISTER_ENABLE_RINGS``.
- the kernel must keep completions when the completion ring is full (``IORING_FEAT_NODROP``)
  and must be done with a submission's memory (iovec arrays) when ``io_uring_enter`` returns
  (``IORING_FEAT_SUBMIT_STABLE``), so the iovecs live in one arena reused per batch.

Submitting a batch writes one 64-byte SQE per request into the shared ring and makes one
``io_uring_enter``. Reads the page cache already holds complete inside that call, so the
completion ring is looked at right after (eventfd first: a completion after that signals
again). A flush is ``IORING_OP_FSYNC`` with ``IORING_FSYNC_DATASYNC`` and ``IOSQE_IO_DRAIN``:
it starts after every earlier request completed.

Memory ordering: the rings are shared with the kernel without locks. x86 keeps stores in order
and loads in order (the engine runs on x86 only): the SQE is written before the tail that
publishes it, and the completion tail is read before the entries it covers.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct

from engine.io import FLUSH, READ, Backend, IoRequest
from engine.io.aio_sys import (
    IO_URING_OP_SUPPORTED,
    IORING_ENTER_GETEVENTS,
    IORING_FEAT_NODROP,
    IORING_FEAT_SUBMIT_STABLE,
    IORING_FSYNC_DATASYNC,
    IORING_OFF_CQ_RING,
    IORING_OFF_SQ_RING,
    IORING_OFF_SQES,
    IORING_OP_FSYNC,
    IORING_OP_READV,
    IORING_OP_WRITEV,
    IORING_REGISTER_ENABLE_RINGS,
    IORING_REGISTER_EVENTFD,
    IORING_REGISTER_FILES,
    IORING_REGISTER_PROBE,
    IORING_REGISTER_RESTRICTIONS,
    IORING_RESTRICTION_SQE_FLAGS_ALLOWED,
    IORING_RESTRICTION_SQE_FLAGS_REQUIRED,
    IORING_RESTRICTION_SQE_OP,
    IORING_SETUP_CQSIZE,
    IORING_SETUP_R_DISABLED,
    IOSQE_FIXED_FILE,
    IOSQE_IO_DRAIN,
    SYS_IO_URING_ENTER,
    SYS_IO_URING_REGISTER,
    SYS_IO_URING_SETUP,
    address,
    ffi,
    libc,
    syscall,
)

IORING_OP_READ = 22
IORING_OP_WRITE = 23
OPS = (IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC, IORING_OP_READ, IORING_OP_WRITE)
MAX_ENTRIES = 32768
# struct io_uring_sqe up to user_data: opcode, flags, ioprio, fd, off, addr, len, rw_flags,
# user_data (the rest stays zero: the ring is zero-filled and nothing else is ever written)
_SQE = struct.Struct("<BBHiQQIIQ")
_CQE = struct.Struct("<QiI")
_IOV = struct.Struct("<QQ")
ARENA = 64 * 1024


class IoUringUnsupported(OSError):
    """This kernel's io_uring lacks something the back end needs (the message says what)."""


def _entries(capacity: int) -> int:
    n = 1
    while n < min(capacity, MAX_ENTRIES):
        n <<= 1
    return n


class IoUring(Backend):
    mode = "io_uring"

    def __init__(self, fd: int, capacity: int) -> None:
        super().__init__(fd, capacity)
        entries = _entries(capacity)
        params = ffi.new("struct io_uring_params *")
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED
        params.cq_entries = 2 * entries
        self.ring_fd = syscall(SYS_IO_URING_SETUP, entries, address(params))
        self._maps: list[mmap.mmap] = []
        self.event_fd = None
        try:
            self._setup(params)
        except BaseException:
            self.close()
            raise

    def _setup(self, p: object) -> None:
        need = IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE
        if p.features & need != need:  # type: ignore[attr-defined]
            raise IoUringUnsupported(
                errno.EOPNOTSUPP, "io_uring lacks FEAT_NODROP/FEAT_SUBMIT_STABLE (Linux < 5.5)"
            )
        sq, cq = p.sq_off, p.cq_off  # type: ignore[attr-defined]
        n_sq, n_cq = p.sq_entries, p.cq_entries  # type: ignore[attr-defined]
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0x8000)

        def ring(size: int, offset: int) -> mmap.mmap:
            m = mmap.mmap(self.ring_fd, size, flags=flags, prot=prot, offset=offset)
            self._maps.append(m)
            return m

        sq_ring = ring(sq.array + 4 * n_sq, IORING_OFF_SQ_RING)
        cq_ring = ring(cq.cqes + 16 * n_cq, IORING_OFF_CQ_RING)
        self._sqes = ring(64 * n_sq, IORING_OFF_SQES)
        self._sq = memoryview(sq_ring).cast("I")
        self._cq = memoryview(cq_ring).cast("I")
        self._cq_bytes = memoryview(cq_ring)
        self._sq_tail_i, self._sq_mask = sq.tail // 4, self._sq[sq.ring_mask // 4]
        self._cq_head_i, self._cq_tail_i = cq.head // 4, cq.tail // 4
        self._cq_mask, self._cqes = self._cq[cq.ring_mask // 4], cq.cqes
        for i in range(n_sq):  # the SQ array maps ring slot i to SQE i, once and for all
            self._sq[sq.array // 4 + i] = i
        self._tail = self._sq[self._sq_tail_i]
        self._probe_ops()
        fds = ffi.new("int32_t[1]", [self.fd])
        self._register(IORING_REGISTER_FILES, address(fds), 1)
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        efd = ffi.new("int32_t[1]", [self.event_fd])
        self._register(IORING_REGISTER_EVENTFD, address(efd), 1)
        rules = [(IORING_RESTRICTION_SQE_OP, op) for op in OPS]
        rules += [(IORING_RESTRICTION_SQE_FLAGS_ALLOWED, IOSQE_FIXED_FILE | IOSQE_IO_DRAIN)]
        rules += [(IORING_RESTRICTION_SQE_FLAGS_REQUIRED, IOSQE_FIXED_FILE)]
        res = ffi.new("struct io_uring_restriction[]", len(rules))
        for i, (kind, value) in enumerate(rules):
            res[i].opcode, res[i].op = kind, value
        self._register(IORING_REGISTER_RESTRICTIONS, address(res), len(rules))
        self._register(IORING_REGISTER_ENABLE_RINGS, 0, 0)
        self._arena = ffi.new("char[]", ARENA)
        self._arena_mem = ffi.buffer(self._arena)
        self._arena_base = address(self._arena)
        self._free = list(range(self.capacity - 1, -1, -1))
        self._slots: list[IoRequest | None] = [None] * self.capacity
        self._enter = libc.syscall

    def _register(self, opcode: int, arg: int, nr: int) -> None:
        try:
            syscall(SYS_IO_URING_REGISTER, self.ring_fd, opcode, arg, nr)
        except OSError as e:
            raise IoUringUnsupported(
                e.errno, f"io_uring_register({opcode}) failed: {e.strerror} (Linux < 5.10?)"
            ) from None

    def _probe_ops(self) -> None:
        probe = ffi.new("struct io_uring_probe *")
        self._register(IORING_REGISTER_PROBE, address(probe), 256)
        missing = [
            op
            for op in OPS
            if op > probe.last_op or not probe.ops[op].flags & IO_URING_OP_SUPPORTED
        ]
        if missing:
            raise IoUringUnsupported(
                errno.EOPNOTSUPP, f"io_uring lacks operations {missing} (Linux < 5.6)"
            )

    # -- submission --------------------------------------------------------------------------------

    def submit(self, reqs: list[IoRequest]) -> list[IoRequest]:
        pack, sqes, mask = _SQE.pack_into, self._sqes, self._sq_mask
        tail, used, n = self._tail, 0, 0
        arena_mem, arena_base = self._arena_mem, self._arena_base
        for r in reqs:
            slot = self._free.pop()
            self._slots[slot] = r
            at = 64 * (tail & mask)
            if r.op == FLUSH:
                pack(sqes, at, IORING_OP_FSYNC, IOSQE_FIXED_FILE | IOSQE_IO_DRAIN, 0, 0, 0, 0, 0,
                     IORING_FSYNC_DATASYNC, slot)  # fmt: skip
            else:
                iov = r.iov
                assert iov is not None
                if iov.count == 1:  # one buffer: no iovec array to import
                    base, length = _IOV.unpack(iov.data)
                    op = IORING_OP_READ if r.op == READ else IORING_OP_WRITE
                    pack(sqes, at, op, IOSQE_FIXED_FILE, 0, 0, r.offset, base, length, 0, slot)
                else:
                    size = 16 * iov.count
                    if used + size > ARENA:
                        self._sq[self._sq_tail_i] = tail & 0xFFFFFFFF
                        self._io_uring_enter(n)
                        used = n = 0
                    arena_mem[used : used + size] = iov.data
                    op = IORING_OP_READV if r.op == READ else IORING_OP_WRITEV
                    pack(sqes, at, op, IOSQE_FIXED_FILE, 0, 0, r.offset, arena_base + used,
                         iov.count, 0, slot)  # fmt: skip
                    used += size
            tail += 1
            n += 1
        self._tail = tail & 0xFFFFFFFF
        self._sq[self._sq_tail_i] = self._tail
        self._io_uring_enter(n)
        return self.reap()

    def _io_uring_enter(self, n: int) -> None:
        """Hand ``n`` new SQEs to the kernel; they are its own when this returns."""
        self.in_flight += n
        while n:
            got = self._enter(SYS_IO_URING_ENTER, self.ring_fd, n, 0, 0, 0, 0)
            if got > 0:
                n -= got
                continue
            err = ffi.errno if got < 0 else errno.EIO
            if err in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                if err != errno.EINTR:  # out of resources until completions are reaped
                    self._enter(SYS_IO_URING_ENTER, self.ring_fd, 0, 1, IORING_ENTER_GETEVENTS,
                                0, 0)  # fmt: skip
                continue
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    # -- completion --------------------------------------------------------------------------------

    def reap(self) -> list[IoRequest]:
        try:
            os.eventfd_read(self.event_fd)  # type: ignore[arg-type]
        except BlockingIOError:
            pass
        cq = self._cq
        head, tail = cq[self._cq_head_i], cq[self._cq_tail_i]
        if head == tail:
            return []
        out: list[IoRequest] = []
        unpack, mem, base, mask = _CQE.unpack_from, self._cq_bytes, self._cqes, self._cq_mask
        slots, free = self._slots, self._free
        while head != tail:
            slot, res, _flags = unpack(mem, base + 16 * (head & mask))
            r = slots[slot]
            assert r is not None
            slots[slot] = None
            free.append(slot)
            r.res = res
            out.append(r)
            head = (head + 1) & 0xFFFFFFFF
        cq[self._cq_head_i] = head
        self.in_flight -= len(out)
        return out

    def drain(self) -> list[IoRequest]:
        out: list[IoRequest] = []
        while self.in_flight:
            out += self.reap()
            if self.in_flight:
                got = self._enter(SYS_IO_URING_ENTER, self.ring_fd, 0, 1, IORING_ENTER_GETEVENTS,
                                  0, 0)  # fmt: skip
                if got < 0 and ffi.errno != errno.EINTR:
                    raise OSError(ffi.errno, f"io_uring_enter: {os.strerror(ffi.errno)}")
        return out

    def close(self) -> None:
        if self.in_flight and self._maps:
            self.drain()
        for name in ("_sq", "_cq", "_cq_bytes"):
            view = self.__dict__.pop(name, None)
            if view is not None:
                view.release()
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a view of it is still alive: unmapped when that goes
                pass
        self._maps = []
        if self.ring_fd >= 0:
            os.close(self.ring_fd)
            self.ring_fd = -1
        if self.event_fd is not None:
            os.close(self.event_fd)
            self.event_fd = None

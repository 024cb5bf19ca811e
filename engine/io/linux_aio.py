"""``aio = "native"``: Linux AIO (``io_setup``/``io_submit``/``io_getevents``) with an eventfd.

A batch becomes one ``io_submit`` of ``IOCB_CMD_PREADV``/``PWRITEV`` control blocks, each with
``IOCB_FLAG_RESFD`` so its completion signals ``event_fd``; the device's loop then reaps every
completed event in one ``io_getevents`` (``min_nr = 0``: never blocks). Linux AIO is truly
asynchronous only with O_DIRECT, which is why StratoVirt and this engine accept ``native`` only
with ``direct``. The kernel copies the iovec arrays during ``io_submit``, so they live in one
reusable arena; the guest pages they name stay pinned by each request's ``HostIovec``.

A flush is a barrier: the writes in flight complete first (``io_getevents`` waits for them),
then ``fdatasync`` runs on the loop. A flush that finds nothing in flight (the usual case: a
driver flushes after its writes completed) costs one system call.
"""

from __future__ import annotations

import errno
import os
import struct

from engine.io import FLUSH, READ, Backend, IoRequest
from engine.io.aio_sys import (
    IOCB_CMD_PREADV,
    IOCB_CMD_PWRITEV,
    IOCB_FLAG_RESFD,
    SYS_IO_DESTROY,
    SYS_IO_GETEVENTS,
    SYS_IO_SETUP,
    SYS_IO_SUBMIT,
    address,
    ffi,
    libc,
    syscall,
)

# struct iocb: data, key, rw_flags, opcode, reqprio, fildes, buf, nbytes, offset, reserved2,
# flags, resfd (aio_abi.h, little-endian field order)
_IOCB = struct.Struct("<QIiHhIQQqQII")
_EVENT = struct.Struct("<QQqq")  # struct io_event: data, obj, res, res2
_IOV = 16
#: iovec bytes one io_submit call may carry (the kernel copies them during the call)
ARENA = 64 * 1024


class LinuxAio(Backend):
    mode = "native"

    def __init__(self, fd: int, capacity: int) -> None:
        super().__init__(fd, capacity)
        ctx = ffi.new("unsigned long *")
        syscall(SYS_IO_SETUP, capacity, address(ctx))
        self.ctx = ctx[0]
        try:
            self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            syscall(SYS_IO_DESTROY, self.ctx)
            raise
        self._iocbs = ffi.new("struct iocb[]", capacity)
        self._iocb_mem = ffi.buffer(self._iocbs)
        self._iocb_base = address(self._iocbs)
        self._ptrs = ffi.new("uint64_t[]", capacity)
        self._ptr_base = address(self._ptrs)
        self._events = ffi.new("struct io_event[]", capacity)
        self._event_mem = ffi.buffer(self._events)
        self._events_addr = address(self._events)
        self._arena = ffi.new("char[]", ARENA)
        self._arena_mem = ffi.buffer(self._arena)
        self._arena_base = address(self._arena)
        self._free = list(range(capacity - 1, -1, -1))
        self._slots: list[IoRequest | None] = [None] * capacity
        self._submit = libc.syscall

    # -- submission --------------------------------------------------------------------------------

    def submit(self, reqs: list[IoRequest]) -> list[IoRequest]:
        done: list[IoRequest] = []
        batch: list[int] = []
        used = 0  # arena bytes
        pack, mem, efd, fd = _IOCB.pack_into, self._iocb_mem, self.event_fd, self.fd
        for r in reqs:
            if r.op == FLUSH:
                self._io_submit(batch, done)
                batch, used = [], 0
                done += self.drain()
                try:
                    os.fdatasync(fd)
                    r.res = 0
                except OSError as e:
                    r.res = -(e.errno or errno.EIO)
                done.append(r)
                continue
            iov = r.iov
            assert iov is not None
            size = _IOV * iov.count
            if used + size > ARENA:
                self._io_submit(batch, done)
                batch, used = [], 0
            self._arena_mem[used : used + size] = iov.data
            slot = self._free.pop()
            self._slots[slot] = r
            opcode = IOCB_CMD_PREADV if r.op == READ else IOCB_CMD_PWRITEV
            pack(mem, 64 * slot, slot, 0, 0, opcode, 0, fd, self._arena_base + used, iov.count,
                 r.offset, 0, IOCB_FLAG_RESFD, efd)  # fmt: skip
            used += size
            batch.append(slot)
        self._io_submit(batch, done)
        return done

    def _io_submit(self, slots: list[int], done: list[IoRequest]) -> None:
        """io_submit the control blocks of ``slots``; a refused one completes with its errno."""
        if not slots:
            return
        ptrs, base = self._ptrs, self._iocb_base
        for i, slot in enumerate(slots):
            ptrs[i] = base + 64 * slot
        pos = 0
        while pos < len(slots):
            n = self._submit(SYS_IO_SUBMIT, self.ctx, len(slots) - pos, self._ptr_base + 8 * pos,
                             0, 0, 0)  # fmt: skip
            if n > 0:
                self.in_flight += n
                pos += n
                continue
            err = ffi.errno if n < 0 else errno.EIO
            if err == errno.EINTR:
                continue
            # The kernel refused the control block at ``pos`` (EINVAL for a misaligned O_DIRECT
            # buffer, EAGAIN when out of resources): that request fails, the rest go on.
            slot = slots[pos]
            r = self._slots[slot]
            assert r is not None
            self._release(slot)
            r.res = -err
            done.append(r)
            pos += 1

    # -- completion --------------------------------------------------------------------------------

    def reap(self) -> list[IoRequest]:
        assert self.event_fd is not None
        try:
            os.eventfd_read(self.event_fd)  # first: a completion after this signals again
        except BlockingIOError:
            pass
        return self._getevents(0)

    def _getevents(self, min_nr: int) -> list[IoRequest]:
        out: list[IoRequest] = []
        while self.in_flight:
            n = self._submit(SYS_IO_GETEVENTS, self.ctx, min_nr, self.capacity,
                             self._events_addr, 0, 0)  # fmt: skip
            if n < 0:
                if ffi.errno == errno.EINTR:
                    continue
                raise OSError(ffi.errno, f"io_getevents: {os.strerror(ffi.errno)}")
            for slot, _obj, res, _res2 in _EVENT.iter_unpack(self._event_mem[: 32 * n]):
                r = self._slots[slot]
                assert r is not None
                self._release(slot)
                r.res = res
                out.append(r)
            self.in_flight -= n
            min_nr = max(0, min_nr - n)
            if min_nr == 0:
                break
        return out

    def _release(self, slot: int) -> None:
        self._slots[slot] = None
        self._free.append(slot)

    def drain(self) -> list[IoRequest]:
        return self._getevents(self.in_flight)

    def close(self) -> None:
        if self.in_flight:
            self.drain()
        if self.ctx:
            syscall(SYS_IO_DESTROY, self.ctx)
            self.ctx = 0
        if self.event_fd is not None:
            os.close(self.event_fd)
            self.event_fd = None

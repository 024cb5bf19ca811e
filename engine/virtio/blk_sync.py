"""virtio-blk's synchronous data path for what a back end cannot take as it is.

The back ends (``engine/io``) take a request as one host iovec array. A request comes here
instead when that is not possible: more than IOV_MAX pieces (a buffer across adjacent guest
RAM regions is two), buffers or offset not aligned for O_DIRECT, or the rest of a transfer the
kernel did short (end of file, a full disk). It runs on the device's loop and finishes before
returning: ``preadv``/``pwritev`` over views of guest memory, looping until done, and with
O_DIRECT a page-aligned bounce buffer (read-modify-write at unaligned edges).
"""

from __future__ import annotations

import ctypes
import mmap

from engine.virtio.iov import copy_in, copy_out, preadv_full, pwritev_full

BOUNCE_SIZE = 1 << 20


class SyncPath:
    """Views-based reads and writes of one drive's file (``fd``), O_DIRECT-aware."""

    def __init__(self, fd: int, direct: bool) -> None:
        self.fd = fd
        self.direct = direct
        #: O_DIRECT alignment in bytes: 512 until the file system refuses it, then 4096
        self.align = 512
        self._bounce: mmap.mmap | None = None

    def close(self) -> None:
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None

    def rw(self, write: bool, offset: int, views: list[memoryview]) -> None:
        """All of ``views`` to or from the file at ``offset``; past the end of file reads zeros.
        Raises ``OSError``."""
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

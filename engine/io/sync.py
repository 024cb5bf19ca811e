"""``aio = "off"``: synchronous ``preadv``/``pwritev``/``fdatasync`` on the device's event loop.

The loop thread blocks in the system call (cffi drops the GIL meanwhile, so vCPUs run on). No
thread hand-off and no completion event: for data in the host's page cache the cheapest path.
"""

from __future__ import annotations

import os

from engine.io import FLUSH, READ, Backend, IoRequest
from engine.io.aio_sys import ffi, libc


class SyncBackend(Backend):
    mode = "off"

    def submit(self, reqs: list[IoRequest]) -> list[IoRequest]:
        fd = self.fd
        preadv, pwritev = libc.preadv, libc.pwritev
        for r in reqs:
            op = r.op
            if op == FLUSH:
                try:
                    os.fdatasync(fd)
                    r.res = 0
                except OSError as e:
                    r.res = -(e.errno or 5)
                continue
            iov = r.iov
            assert iov is not None
            n = (preadv if op == READ else pwritev)(fd, iov.data, iov.count, r.offset)
            r.res = n if n >= 0 else -ffi.errno
        return reqs

"""Block I/O back ends: how a disk's reads, writes and flushes reach the host kernel
(docs/virtio.md, "virtio-blk's data path").

A drive's ``aio`` picks one (StratoVirt's values):

- ``off`` (``SyncBackend``): each request is one ``preadv``/``pwritev``/``fdatasync`` on the
  device's event loop, done before ``submit`` returns.
- ``native`` (``LinuxAio``): Linux AIO. ``submit`` hands a whole batch to the kernel in one
  ``io_submit``; completions arrive in any order and signal an eventfd the device's loop
  watches. A flush waits for the writes in flight, then ``fdatasync``.
- ``io_uring`` (``IoUring``): one ``io_uring_enter`` per batch; completions as for native. A
  flush is an ``IORING_OP_FSYNC`` (datasync) that drains every earlier request first.

Every back end takes requests whose buffers are host iovecs ``GuestMemory`` made and checked
(``HostIovec``), and completes each with ``res``: bytes moved, or ``-errno``. None acknowledges
anything: the device writes the status the guest sees only after a request completed, so a
write is acknowledged only after the host write completed and a flush only after ``fdatasync``
returned. ``capacity`` bounds what may be in flight; the device never submits more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.machine.memory import HostIovec

AIO_MODES = ("off", "native", "io_uring")

READ = 0
WRITE = 1
FLUSH = 2


class IoRequest:
    """One operation on the back end's file: ``op`` at ``offset`` over ``iov``; ``res`` when done.

    ``iov`` (its packed ``struct iovec[]`` and its pins on guest memory) stays referenced until
    the request completes, so the mappings the kernel reads or fills cannot go away meanwhile.
    Devices subclass it to carry their own per-request state.
    """

    __slots__ = ("iov", "offset", "op", "res")

    def __init__(self, op: int, offset: int = 0, iov: HostIovec | None = None) -> None:
        self.op = op
        self.offset = offset
        self.iov = iov
        self.res = 0


class Backend:
    """What a device needs of a back end (the methods run on the device's loop thread)."""

    #: the ``aio`` value this back end implements
    mode = "off"
    #: readable when completions wait to be reaped; None when ``submit`` completes everything
    event_fd: int | None = None

    def __init__(self, fd: int, capacity: int) -> None:
        self.fd = fd
        self.capacity = capacity
        self.in_flight = 0

    def submit(self, reqs: list[IoRequest]) -> list[IoRequest]:
        """Start ``reqs`` in order; returns the requests already complete (any of them)."""
        raise NotImplementedError

    def reap(self) -> list[IoRequest]:
        """The requests completed since the last call (never blocks)."""
        return []

    def drain(self) -> list[IoRequest]:
        """Wait until nothing is in flight; returns what completed meanwhile."""
        return []

    def close(self) -> None:
        """Release the kernel objects (after ``drain``: nothing may be in flight)."""


def open_backend(mode: str, fd: int, capacity: int) -> Backend:
    """The back end for ``aio = mode`` on ``fd``; raises ``OSError`` when this host cannot."""
    if mode == "off":
        from engine.io.sync import SyncBackend

        return SyncBackend(fd, capacity)
    if mode == "native":
        from engine.io.linux_aio import LinuxAio

        return LinuxAio(fd, capacity)
    if mode == "io_uring":
        from engine.io.uring import IoUring

        return IoUring(fd, capacity)
    raise ValueError(f"aio {mode!r} is not one of {AIO_MODES}")

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

This module is the device (config, lifecycle, snapshot, batching, completions, throttling);
one request's checks and completion are ``blk_request.py`` (a base class ``Blk`` inherits),
the wire format ``blk_spec.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from engine.errors import HostError
from engine.hostfiles import open_host_file
from engine.io import Backend, IoRequest, open_backend
from engine.virtio.blk_accounting import BlkAccounting
from engine.virtio.blk_errors import BlkProfile, ErrorLog, backend_refused
from engine.virtio.blk_request import BlkRequest, BlkRequests
from engine.virtio.blk_spec import (
    CONFIG,
    ID_BYTES,
    MAX_DISCARD_SECTORS,
    SECTOR,
    SIZE_MAX,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
)
from engine.virtio.blk_sync import SyncPath
from engine.virtio.device import VIRTIO_ID_BLOCK, Loop, bit
from engine.virtio.iov import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from engine.virtio.throttle import RateTimer, TokenBucket


def _kib(r: IoRequest) -> int:
    return r.length >> 10 if isinstance(r, BlkRequest) else -1


@dataclass(frozen=True, slots=True)
class BlkState:
    """The disk size the guest's driver read at probe: a restore needs the same (StratoVirt:
    "only the previous file or a copy of it")."""

    capacity: int


class Blk(BlkRequests):
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
            CONFIG.pack(
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

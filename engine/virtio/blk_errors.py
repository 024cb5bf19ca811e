"""virtio-blk's I/O errors in the operator's terms: what failed, on which file, why, what to do;
and, on request (``SVLAUNCH_BLK_STATS=1``), how its requests went through the back end.

The guest only ever learns VIRTIO_BLK_S_IOERR; the engine log says which operation on which
image failed, with the kernel's reason (not a bare strerror such as "Illegal seek") and a hint.
A guest can repeat a failing request as fast as it likes, so after the first line of each kind
the log gets at most one line per ``QUIET_S`` with the count of the others.
"""

from __future__ import annotations

import errno
import os
import time

from engine.errors import HostError
from engine.io import FLUSH, READ, WRITE
from engine.logsetup import get_logger

log = get_logger(__name__)

QUIET_S = 10.0
#: what failed, by engine.io op or virtio-blk request type (discard 11, write-zeroes 13)
_WHAT = {READ: "reading", WRITE: "writing", FLUSH: "flushing (fdatasync)", 11: "discarding",
         13: "zeroing"}  # fmt: skip
_HINTS = {
    errno.ENOSPC: "the host file system holding the image is full: free space there",
    errno.EDQUOT: "the disk quota of the user running the VM is used up",
    errno.EIO: "the host's storage reported an error: check dmesg and the disk's health",
    errno.EROFS: "the host file system is read-only now (often after errors): check dmesg",
    errno.EFBIG: "the write would grow the image past the file system's file size limit",
    errno.ESPIPE: "the drive is not a seekable file: use a regular file or a block device",
    errno.EINVAL: "the file system refused the request as given (O_DIRECT alignment?): "
    "try direct = false",
    errno.ENXIO: "the block device is gone: check that the disk is still attached",
    errno.ENODEV: "the block device is gone: check that the disk is still attached",
    errno.EBADF: "the image was closed under the engine (an internal error: please report it)",
}


class ErrorLog:
    """One drive's I/O error reports."""

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.count = 0
        self._last: dict[tuple[int, int], float] = {}  # (op, errno) -> when last logged
        self._quiet = 0  # errors not logged since the last line

    def report(self, op: int, offset: int, length: int, err: int) -> None:
        self.count += 1
        now = time.monotonic()
        last = self._last.get((op, err))
        if last is not None and now - last < QUIET_S:
            self._quiet += 1
            return
        self._last[(op, err)] = now
        more = f" ({self._quiet} more I/O errors since the last report)" if self._quiet else ""
        self._quiet = 0
        what = _WHAT.get(op, "an I/O request on")
        where = "" if op == FLUSH else f" {length} bytes at byte {offset} of"
        reason = os.strerror(err) if err else "unknown error"
        name = errno.errorcode.get(err, str(err))
        hint = _HINTS.get(err, "check the image and the host's storage (dmesg)")
        log.warning(
            "%s: %s%s %s failed: %s (%s); the guest gets an I/O error%s. hint: %s",
            self.name,
            what,
            where,
            self.path,
            reason,
            name,
            more,
            hint,
        )


def backend_refused(name: str, path: str, aio: str, err: OSError) -> HostError:
    """The device cannot start: its back end (or the image's size) refused, in plain words."""
    if err.errno == errno.ESPIPE:
        return HostError(
            f"virtio-blk {name}: drive {path} has no size (it is not seekable)",
            hint=_HINTS[errno.ESPIPE],
        )
    from engine.io.probe import explain

    p = explain(aio, err)
    return HostError(f"virtio-blk {name}: aio {aio!r} is not available: {p.message}", hint=p.hint)


class BlkProfile:
    """Batch sizes, completion wake-ups and request latencies of one drive, for profiling in
    the rig (``bench/rig_blk.py --engine-env SVLAUNCH_BLK_STATS=1``); logged when it closes."""

    def __init__(self, name: str, aio: str) -> None:
        self.name, self.aio = name, aio
        self.batches: list[int] = []  # requests per submission
        self.wakes: list[int] = []  # requests completed per eventfd wake-up
        self.latency_ns: list[int] = []  # popped -> completed, per request
        #: ``SVLAUNCH_BLK_STATS=2``: a timeline of the last events (kicks, completions)
        self.timeline: list[str] | None = (
            [] if os.environ.get("SVLAUNCH_BLK_STATS") == "2" else None
        )
        self.t0 = time.perf_counter_ns()

    def event(self, what: str) -> None:
        if self.timeline is not None:
            self.timeline.append(f"{(time.perf_counter_ns() - self.t0) / 1e6:10.3f} ms {what}")
            del self.timeline[:-400]

    def log(self) -> None:
        def pct(xs: list[int], q: float) -> float:
            return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else 0

        n = len(self.latency_ns)
        lat = " ".join(
            f"p{int(q * 100)}={pct(self.latency_ns, q) / 1000:.0f}us" for q in (0.5, 0.9, 0.99)
        )
        log.warning(
            "blk-stats %s aio=%s: %d requests in %d submissions (%.2f each), %d completion "
            "wake-ups (%.2f each, %d empty); latency %s",
            self.name,
            self.aio,
            n,
            len(self.batches),
            sum(self.batches) / max(1, len(self.batches)),
            len(self.wakes),
            sum(self.wakes) / max(1, len(self.wakes)),
            self.wakes.count(0),
            lat,
        )
        for line in self.timeline or ():
            log.warning("blk-timeline %s %s", self.name, line)

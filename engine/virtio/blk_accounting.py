"""virtio-blk request accounting in QEMU's ``BlockDeviceStats`` terms (QMP ``query-blockstats``).

QEMU's rules, kept: a request that completes counts an operation, its bytes and its time; one the
host failed to do (an I/O error) counts as failed; one the device refused before any I/O (out of
range, a write to a read-only drive) counts as invalid. Write-zeroes counts as a write, discard
as an unmap, as QEMU's virtio-blk accounts them. ``wr_highest_offset`` is the end of the
furthest write.
"""

from __future__ import annotations

import time

KINDS = ("rd", "wr", "flush", "unmap")


class BlkAccounting:
    """One device's counters; updated on the loop that serves its queues."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        for kind in KINDS:
            self.counters[f"{kind}_operations"] = 0
            self.counters[f"{kind}_total_time_ns"] = 0
            self.counters[f"failed_{kind}_operations"] = 0
            self.counters[f"invalid_{kind}_operations"] = 0
            if kind != "flush":
                self.counters[f"{kind}_bytes"] = 0
        self.counters["wr_highest_offset"] = 0
        self.last_ns: int | None = None  # time.monotonic_ns() of the last request

    def record(self, kind: str, *, ok: bool, failed: bool, nbytes: int, end: int, ns: int) -> None:
        c = self.counters
        if ok:
            c[f"{kind}_operations"] += 1
            c[f"{kind}_total_time_ns"] += ns
            if kind != "flush":
                c[f"{kind}_bytes"] += nbytes
            if kind == "wr" and end > c["wr_highest_offset"]:
                c["wr_highest_offset"] = end
        elif failed:
            c[f"failed_{kind}_operations"] += 1
        else:
            c[f"invalid_{kind}_operations"] += 1
        self.last_ns = time.monotonic_ns()

    def idle_ns(self) -> int | None:
        """Nanoseconds since the last request (QEMU's ``idle_time_ns``), None before any."""
        return None if self.last_ns is None else time.monotonic_ns() - self.last_ns

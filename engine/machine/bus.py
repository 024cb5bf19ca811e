"""The PIO and MMIO buses: guest accesses routed to devices by address, as offsets only.

A device sees ``read(offset, size) -> int`` and ``write(offset, size, value)`` relative to its own
base (Firecracker's ``BusDevice``), never the absolute address, so the same device works at any
base. Ranges may not overlap; insertion refuses an overlap with both names. Lookups are a bisect
over sorted starts, so a guest's access costs O(log n). Unclaimed reads return all-ones and
unclaimed writes are dropped (what real hardware does), counted for the stats.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Protocol

from engine.errors import EngineError

CACHE_LIMIT = 1024


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(EngineError):
    """Two devices were placed on overlapping ranges (a layout bug, caught at build time)."""


@dataclass(frozen=True, slots=True)
class BusRange:
    base: int
    length: int
    name: str

    @property
    def end(self) -> int:
        return self.base + self.length


class Bus:
    """Address → (device, offset). Insertion happens at build/hot-plug time under a lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._entries: list[tuple[BusRange, BusDevice, threading.Lock | None]] = []
        self._lock = threading.Lock()
        self.unhandled = 0
        #: addr -> (base, end, device, lock) for addresses guests used: a dict hit instead of
        #: a bisect per exit (a guest's PIO/MMIO exits hit a handful of registers). Replaced,
        #: not mutated, on any change to the ranges; bounded, so a guest sweeping a window
        #: cannot grow it forever.
        self._cache: dict[int, tuple[int, int, BusDevice, threading.Lock | None]] = {}

    def insert(
        self,
        device: BusDevice,
        base: int,
        length: int,
        name: str,
        *,
        serialize: bool = True,
        lock: threading.Lock | None = None,
    ) -> None:
        """Place ``device`` at ``[base, base+length)``; ``serialize`` gives it its own lock.

        A lock per device keeps vCPU threads from interleaving inside a device model that is
        not thread-safe; ``lock`` is that lock when other threads share it too (the UART's
        input and output callbacks); a device that locks for itself passes ``serialize=False``.
        """
        if length <= 0:
            raise BusError(f"{self.name} bus: {name} has an empty range at {base:#x}")
        new = BusRange(base, length, name)
        with self._lock:
            i = bisect.bisect_left(self._starts, base)
            for j in (i - 1, i):
                if 0 <= j < len(self._entries):
                    r = self._entries[j][0]
                    if r.base < new.end and new.base < r.end:
                        raise BusError(
                            f"{self.name} bus: {name} [{base:#x}, {new.end:#x}) overlaps "
                            f"{r.name} [{r.base:#x}, {r.end:#x})"
                        )
            self._starts.insert(i, base)
            if lock is None and serialize:
                lock = threading.Lock()
            self._entries.insert(i, (new, device, lock))
            self._cache = {}

    def replace(self, base: int, device: BusDevice, name: str) -> BusDevice:
        """Swap the device at ``base`` in place (hot-replace), keeping its range; returns the old.

        The swap waits for the old device's lock, so no vCPU is inside the old device when this
        returns; accesses that looked the old entry up just before may still reach it once.
        """
        with self._lock:
            i = bisect.bisect_left(self._starts, base)
            if i >= len(self._starts) or self._starts[i] != base:
                raise BusError(f"{self.name} bus: nothing at {base:#x} to replace")
            rng, old, lock = self._entries[i]
            if lock is None:
                self._entries[i] = (BusRange(base, rng.length, name), device, None)
                self._cache = {}
                return old
            with lock:
                self._entries[i] = (BusRange(base, rng.length, name), device, lock)
                self._cache = {}
            return old

    def remove(self, base: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, base)
            if i < len(self._starts) and self._starts[i] == base:
                del self._starts[i]
                del self._entries[i]
                self._cache = {}

    def lookup(self, addr: int) -> tuple[BusRange, BusDevice, threading.Lock | None] | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            entry = self._entries[i]
            if addr < entry[0].end:
                return entry
        return None

    def _fill(self, addr: int) -> tuple[int, int, BusDevice, threading.Lock | None] | None:
        """The cache entry for ``addr`` (a bisect the first time a guest uses an address)."""
        entry = self.lookup(addr)
        if entry is None:
            return None
        rng, dev, lock = entry
        hit = (rng.base, rng.end, dev, lock)
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[addr] = hit
        return hit

    def read(self, addr: int, size: int) -> int:
        hit = self._cache.get(addr) or self._fill(addr)
        if hit is None or addr + size > hit[1]:
            self.unhandled += 1
            return (1 << (8 * size)) - 1
        base, _end, dev, lock = hit
        if lock is None:
            return dev.read(addr - base, size)
        with lock:
            return dev.read(addr - base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self._cache.get(addr) or self._fill(addr)
        if hit is None or addr + size > hit[1]:
            self.unhandled += 1
            return
        base, _end, dev, lock = hit
        if lock is None:
            dev.write(addr - base, size, value)
            return
        with lock:
            dev.write(addr - base, size, value)

    def ranges(self) -> list[BusRange]:
        return [e[0] for e in self._entries]

"""virtio-balloon (virtio 1.2 §5.5): give guest pages back to the host, and take them again.

Inflated pages are released with ``madvise``: MADV_DONTNEED on private anonymous RAM (the next
guest touch faults in a zero page), MADV_REMOVE on shared or file-backed RAM (frees the
backing store too). Deflate only forgets the pages: the guest's next access re-faults them, so
reclaim needs no host work. Free page reporting (VIRTIO_BALLOON_F_REPORTING) releases the free
ranges the guest reports the same way. Stats (VIRTIO_BALLOON_F_STATS_VQ, always offered, as
QEMU, so the queue numbering Linux uses is fixed: inflate 0, deflate 1, stats 2, reporting 3)
are kept from the guest's last report. ``set_target``/``query`` are the QMP ``balloon``/
``query-balloon`` back end: ``actual = memory - pages the driver says it holds``.

What one request can make the host do is bounded (buffers may alias, so a chain's length is no
measure): an inflate/deflate request is read up to ``MAX_PFNS`` frame numbers (Linux sends 256),
a stats request up to ``MAX_STATS`` tags, and a report request releases at most the guest's RAM
size in all. Which pages are inflated is one bit per guest page frame (``_Bitmap``), not a
Python object per page.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable

from engine.device_rules import DEFAULT_QUEUE_SIZE
from engine.errors import GuestMemoryError
from engine.virtio.device import VIRTIO_ID_BALLOON, Loop, VirtioDevice, bit
from engine.virtio.queue import DescriptorChain

VIRTIO_BALLOON_F_MUST_TELL_HOST = 0
VIRTIO_BALLOON_F_STATS_VQ = 1
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2
VIRTIO_BALLOON_F_REPORTING = 5

PAGE = 4096
PAGE_SHIFT = 12
_CONFIG = struct.Struct("<IIII")  # num_pages, actual, free_page_hint_cmd_id, poison_val
_STAT = struct.Struct("<HQ")
STAT_NAMES = (
    "swap-in",
    "swap-out",
    "major-faults",
    "minor-faults",
    "free-memory",
    "total-memory",
    "available-memory",
    "disk-caches",
    "hugetlb-allocations",
    "hugetlb-failures",
)
#: Frame numbers read from one inflate/deflate request (16 KiB; Linux sends at most 256).
MAX_PFNS = 4096
#: Stats tags read from one stats request (the spec defines 10; newer drivers a few more).
MAX_STATS = 64


class _Bitmap:
    """One bit per guest page frame below the end of RAM: which pages are in the balloon."""

    def __init__(self, frames: int) -> None:
        self.bits = bytearray((frames + 7) // 8)

    def set(self, pfns: Iterable[int], on: bool) -> None:
        bits = self.bits
        for pfn in pfns:
            i, m = pfn >> 3, 1 << (pfn & 7)
            if i < len(bits):
                bits[i] = bits[i] | m if on else bits[i] & ~m

    def count(self) -> int:
        return int.from_bytes(self.bits, "little").bit_count()


class Balloon(VirtioDevice):
    """The memory balloon; at most one per VM."""

    device_id = VIRTIO_ID_BALLOON

    def __init__(
        self,
        name: str,
        *,
        deflate_on_oom: bool = False,
        free_page_reporting: bool = False,
        memory_size: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        loop: Loop | None = None,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        features = bit(VIRTIO_BALLOON_F_STATS_VQ)
        if deflate_on_oom:
            features |= bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
        if free_page_reporting:
            features |= bit(VIRTIO_BALLOON_F_REPORTING)
        sizes = [queue_size] * (4 if free_page_reporting else 3)
        super().__init__(name, sizes, features, loop=loop)
        self.config = bytearray(_CONFIG.pack(0, 0, 0, 0))
        self.memory_size = memory_size
        self.on_change = on_change
        self.inflated = _Bitmap(0)
        self.released_bytes = 0
        self.guest_stats: dict[str, int] = {}
        self._stats_chain: DescriptorChain | None = None
        self._roles: dict[int, str] = {}

    # -- QMP side (any thread) ---------------------------------------------------------------------

    @property
    def _memory(self) -> int:
        if self.memory_size is not None:
            return self.memory_size
        return self.mem.total_size if self.mem is not None else 0

    def set_target(self, target_bytes: int) -> None:
        """QMP ``balloon``: ask the guest to leave it ``target_bytes`` of RAM."""
        with self.lock:
            target = max(0, min(target_bytes, self._memory))
            pages = (self._memory - target) >> PAGE_SHIFT
            struct.pack_into("<I", self.config, 0, pages)
            if self.interrupt is not None:
                self.interrupt.signal_config()

    def query(self) -> dict[str, int]:
        """QMP ``query-balloon``: ``{"actual": bytes}`` the guest has (memory minus the balloon)."""
        with self.lock:
            actual_pages = struct.unpack_from("<I", self.config, 4)[0]
            return {"actual": self._memory - (actual_pages << PAGE_SHIFT)}

    def request_stats(self) -> None:
        """Hand the stats buffer back so the guest refills it (the spec's polling protocol)."""
        self.on_loop(lambda: self.guarded(self._return_stats))

    # -- transport side ----------------------------------------------------------------------------

    def write_config(self, offset: int, data: bytes) -> None:
        if offset == 4 and len(data) == 4:  # the driver reports how many pages it holds
            before = self.config[4:8]
            self.config[4:8] = data
            if before != data and self.on_change is not None:
                self.on_change(self.query()["actual"])

    def on_activate(self) -> None:
        roles = ["inflate", "deflate"]
        if self.has_feature(VIRTIO_BALLOON_F_STATS_VQ):
            roles.append("stats")
        if self.has_feature(VIRTIO_BALLOON_F_REPORTING):
            roles.append("report")
        self._roles = dict(enumerate(roles))
        assert self.mem is not None
        self.inflated = _Bitmap(self.mem.last_addr >> PAGE_SHIFT)

    def on_reset(self) -> None:
        self._stats_chain = None
        self.inflated = _Bitmap(0)
        self.config[4:8] = bytes(4)

    def process_queue(self, index: int) -> None:
        role = self._roles.get(index)
        q = self.queues[index]
        if role is None or not q.active:
            return
        mem = self.mem
        assert mem is not None
        if role == "stats":
            chain = q.pop()
            if chain is not None:
                self._read_stats(chain)
            return
        while (chain := q.pop()) is not None:
            self.stats.requests += 1
            if role == "report":
                self._report(chain)
            else:
                data = chain.read(mem, 0, 4 * MAX_PFNS)
                pfns = array("I", data[: len(data) // 4 * 4])
                if chain.readable_len > len(data):
                    self.stats.errors += 1  # frames past MAX_PFNS are ignored
                if role == "inflate":
                    self._inflate(pfns)
                else:
                    self.inflated.set(pfns, False)
            q.add_used(chain, 0)
        self.signal(index)

    # -- work --------------------------------------------------------------------------------------

    @property
    def inflated_pages(self) -> int:
        return self.inflated.count()

    def _report(self, chain: DescriptorChain) -> None:
        """Free page reporting: release the reported ranges, at most guest RAM's size in all
        (more can only be the same pages named again)."""
        assert self.mem is not None
        budget = self.mem.total_size
        for addr, length in chain.writable:
            n = min(length, budget)
            self._release(addr, n)
            budget -= n
            if budget == 0:
                break

    def _inflate(self, pfns: Iterable[int]) -> None:
        """Release each page once, coalescing runs of consecutive frames into one madvise."""
        assert self.mem is not None
        find = self.mem.find_region
        valid = sorted(p for p in set(pfns) if find(p << PAGE_SHIFT) is not None)
        run_start = run_len = 0
        for pfn in valid:
            if run_len and pfn == run_start + run_len:
                run_len += 1
                continue
            if run_len:
                self._release(run_start << PAGE_SHIFT, run_len << PAGE_SHIFT)
            run_start, run_len = pfn, 1
        if run_len:
            self._release(run_start << PAGE_SHIFT, run_len << PAGE_SHIFT)
        self.inflated.set(valid, True)

    def _release(self, addr: int, length: int) -> None:
        """Release the whole pages of ``[addr, addr+length)`` (``GuestMemory.discard``)."""
        assert self.mem is not None
        try:
            n = self.mem.discard(addr, length)
        except (GuestMemoryError, OSError):
            # Not RAM (a hostile or confused driver), or hugepage-backed RAM: the pages stay.
            self.stats.errors += 1
            return
        self.released_bytes += n
        self.stats.bytes_in += n

    def _read_stats(self, chain: DescriptorChain) -> None:
        assert self.mem is not None
        data = chain.read(self.mem, 0, MAX_STATS * _STAT.size)
        for i in range(len(data) // _STAT.size):
            tag, val = _STAT.unpack_from(data, i * _STAT.size)
            if tag < len(STAT_NAMES):
                self.guest_stats[STAT_NAMES[tag]] = val
        self._stats_chain = chain  # kept until the host wants fresh numbers

    def _return_stats(self) -> None:
        chain, self._stats_chain = self._stats_chain, None
        stats_q = next((i for i, r in self._roles.items() if r == "stats"), None)
        if chain is not None and stats_q is not None:
            self.queues[stats_q].add_used(chain, 0)
            self.signal(stats_q)

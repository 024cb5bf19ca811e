"""virtio-balloon: inflated and reported pages really leave the process (smaps Rss drops)."""

from __future__ import annotations

import struct

from virtio_driver import Allocator, Driver

from engine.machine.memory import GuestMemory
from engine.virtio import balloon as Bl
from engine.virtio.mmio import MmioTransport

MiB = 1 << 20
RAM = 64 * MiB
POOL = 32 * MiB  # guest pages the test balloons: [32 MiB, 64 MiB)


def rss_kib(mem: GuestMemory) -> int:
    """Rss of the guest RAM mapping, from /proc/self/smaps."""
    start = mem.regions[0].host_addr
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if "-" in line.split()[0] and not line.split()[0].endswith(":"):
                lo = int(line.split("-")[0], 16)
                inside = lo == start
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("mapping not found in smaps")


def make(**kw):
    mem = GuestMemory.anonymous([(0, RAM)])
    changes: list[int] = []
    dev = Bl.Balloon("balloon0", on_change=changes.append, **kw)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    return mem, dev, t, drv, changes


def pfn_chunks(first: int, count: int, per: int = 256):
    for i in range(first, first + count, per):
        yield struct.pack(
            f"<{min(per, first + count - i)}I", *range(i, min(i + per, first + count))
        )


def test_inflate_releases_pages_and_deflate_forgets_them() -> None:
    mem, dev, t, drv, changes = make(deflate_on_oom=True)
    feats = drv.start()
    assert feats & 1 << Bl.VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    mem.fill(POOL, POOL, 0x5A)  # the guest touched these pages
    before = rss_kib(mem)
    assert before >= POOL // 1024
    # QMP: balloon down to 48 MiB -> the device asks for 16 MiB of pages.
    dev.set_target(48 * MiB)
    assert drv.config(0, 4) == 16 * MiB // 4096
    assert drv.ack_interrupt() & 2  # config change interrupt
    inflate = drv.queues[0]
    pages = 16 * MiB // 4096
    for chunk in pfn_chunks(POOL // 4096, pages):
        inflate.add([chunk], [])
    inflate.kick()
    assert len(inflate.collect()) == pages // 256
    after = rss_kib(mem)
    assert before - after >= 16 * 1024 - 64, (before, after)
    assert mem.read(POOL, 16) == bytes(16)  # the page is gone: it reads as zeros
    assert mem.read(POOL + 16 * MiB, 16) == b"\x5a" * 16  # the rest is untouched
    # The driver reports what it holds; query-balloon follows it and BALLOON_CHANGED fires.
    t.write(0x100 + 4, 4, pages)
    assert dev.query() == {"actual": 48 * MiB}
    assert changes == [48 * MiB]
    # Deflate: pages are forgotten; the guest can use them again.
    deflate = drv.queues[1]
    for chunk in pfn_chunks(POOL // 4096, pages):
        deflate.add([chunk], [])
    deflate.kick()
    deflate.collect()
    assert dev.inflated_pages == 0
    mem.fill(POOL, 4096, 1)
    assert mem.read(POOL, 1) == b"\x01"
    t.close()
    mem.close()


def test_hostile_pfns_outside_ram_are_ignored() -> None:
    mem, dev, t, drv, _ = make()
    drv.start()
    inflate = drv.queues[0]
    inflate.add([struct.pack("<4I", 0xFFFFFFFF, RAM // 4096, RAM // 4096 + 7, 0x10_0000)], [])
    inflate.kick()
    assert len(inflate.collect()) == 1
    assert dev.inflated_pages == 0 and dev.released_bytes == 0
    assert not t.status & 0x40
    t.close()
    mem.close()


def test_free_page_reporting_releases_reported_ranges() -> None:
    mem, _dev, t, drv, _ = make(free_page_reporting=True)
    feats = drv.start()
    assert feats & 1 << Bl.VIRTIO_BALLOON_F_REPORTING
    mem.fill(POOL, 8 * MiB, 0x77)
    before = rss_kib(mem)
    report = drv.queues[3]
    # Linux reports free ranges as device-writable buffers pointing at the free pages.
    q = report
    from virtio_driver import DESC

    mem.write(q.desc, DESC.pack(POOL, 4 * MiB, 1 | 2, 1))
    mem.write(q.desc + 16, DESC.pack(POOL + 4 * MiB, 4 * MiB, 2, 0))
    q.inflight[0] = ([0, 1], [])
    q.publish(0)
    q.kick()
    assert len(q.collect()) == 1
    assert before - rss_kib(mem) >= 8 * 1024 - 64
    t.close()
    mem.close()


def test_stats_are_read_and_the_buffer_is_returned_on_request() -> None:
    mem, dev, t, drv, _ = make()
    drv.start()
    statsq = drv.queues[2]
    statsq.add([struct.pack("<HQ", 4, 123 * MiB) + struct.pack("<HQ", 5, 512 * MiB)], [])
    statsq.kick()
    assert dev.guest_stats == {"free-memory": 123 * MiB, "total-memory": 512 * MiB}
    assert statsq.collect() == []  # held by the device
    dev.request_stats()
    assert len(statsq.collect()) == 1
    t.close()
    mem.close()

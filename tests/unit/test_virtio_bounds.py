"""What one guest request can make the host allocate or compute, per device (docs/virtio.md).

A 1 MiB guest posts one chain whose 1024 buffers all name the same guest pages (the spec does
not forbid aliasing), so the chain is many times longer than guest RAM. Each device must serve
it with a bounded host cost: peak RSS growth (the kernel's VmHWM, which a transient copy
raises too) and CPU time, measured around the one kick. The bounds asserted are the documented
ones, written out here as numbers.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from virtio_driver import Allocator, Driver, HostCost

from engine.machine.memory import GuestMemory
from engine.virtio.balloon import Balloon
from engine.virtio.blk import Blk
from engine.virtio.chardev_io import FdBackend
from engine.virtio.console import Console
from engine.virtio.mmio import MmioTransport
from engine.virtio.rng import Rng

KiB, MiB = 1 << 10, 1 << 20
GUEST = 1 * MiB
DATA = 512 * KiB  # the aliased pages: [512 KiB, 1 MiB)
W = 2  # VIRTQ_DESC_F_WRITE


class Guest:
    """A 1 MiB guest with every page touched (so first touches do not count as host cost)."""

    def __init__(self, dev) -> None:
        self.mem = GuestMemory.anonymous([(0, GUEST)])
        self.mem.fill(0, DATA, 0)  # writing zeros touches the pages too
        self.mem.fill(DATA, GUEST - DATA, 0x5A)
        self.dev = dev
        self.t = MmioTransport(dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(0x1000, DATA))

    def close(self) -> None:
        self.t.close()
        self.mem.close()


@pytest.fixture
def guest():
    made: list[Guest] = []

    def make(dev) -> Guest:
        g = Guest(dev)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def aliased(count: int, length: int, flags: int = 0) -> list[tuple[int, int, int]]:
    return [(DATA, length, flags)] * count


def one_request(q, bufs: list[tuple[int, int, int]]) -> tuple[list, HostCost]:
    """Post one chain, kick, and return the completions and what serving it cost the host."""
    q.post_table(bufs)
    with HostCost() as cost:
        q.kick()
    return q.collect(), cost


def assert_small(cost: HostCost) -> None:
    assert cost.peak_mib < 4, f"host RSS grew {cost.peak_mib:.1f} MiB for one request"


def test_console_transmit_copies_a_bounded_prefix(guest) -> None:
    """1024 x 32 KiB = 32 MiB of guest output in one request: the host copies at most 64 KiB
    (main copied all 32 MiB into one bytes object)."""
    a, b = socket.socketpair()
    try:
        g = guest(Console("console0", FdBackend(a)))
        g.drv.start()
        done, cost = one_request(g.drv.queues[1], aliased(1024, 32 * KiB))
        assert len(done) == 1
        assert_small(cost)
        assert g.dev.stats.bytes_in <= 64 * KiB
    finally:
        a.close()
        b.close()


def test_balloon_inflate_reads_a_bounded_number_of_frames(guest) -> None:
    """16 MiB of frame numbers in one inflate request (main: a 16 MiB copy and a 4-million-entry
    tuple, 48 MiB): at most 4096 frames are read."""
    g = guest(Balloon("balloon0"))
    g.drv.start()
    # Frames of the aliased pages themselves (not the rings'), 128 distinct ones over and over.
    g.mem.write(DATA, struct.pack("<4096I", *[DATA // 4096 + p % 128 for p in range(4096)]))
    done, cost = one_request(g.drv.queues[0], aliased(1024, 16 * KiB))
    assert len(done) == 1
    assert_small(cost)
    assert g.dev.stats.errors == 1  # the frames past the bound are ignored, and counted


def test_balloon_stats_are_read_to_a_bounded_depth(guest) -> None:
    g = guest(Balloon("balloon0"))
    g.drv.start()
    g.mem.write(DATA, struct.pack("<HQ", 4, 123 * MiB) * 3200)
    _, cost = one_request(g.drv.queues[2], aliased(1024, 32 * KiB))
    assert_small(cost)
    assert g.dev.guest_stats == {"free-memory": 123 * MiB}


def test_balloon_report_releases_at_most_guest_ram_per_request(guest) -> None:
    """1024 reported ranges, each all of guest RAM: one pass over RAM, not 1024."""
    g = guest(Balloon("balloon0", free_page_reporting=True))
    g.drv.start()
    done, _ = one_request(g.drv.queues[3], [(0, GUEST, W)] * 1024)
    assert len(done) == 1
    assert g.dev.released_bytes <= GUEST


def test_rng_fills_a_bounded_part_of_a_huge_request(guest) -> None:
    """32 MiB of receive buffers: the device reads at most 64 KiB of entropy for them (the spec
    lets it return fewer bytes), instead of 32 MiB of /dev/urandom."""
    g = guest(Rng("rng0"))
    g.drv.start()
    (done,), cost = one_request(g.drv.queues[0], aliased(1024, 32 * KiB, W))
    assert 0 < done.length <= 64 * KiB
    assert cost.cpu_s < 0.05, f"one request took {cost.cpu_s:.3f} s of CPU"


def test_blk_refuses_a_request_larger_than_seg_max_times_size_max(guest, tmp_path: Path) -> None:
    """A read into 514 x 512 KiB aliased buffers (257 MiB > seg_max 254 x size_max 1 MiB) fails
    with IOERR before any I/O; one at the bound is served."""
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(1 << 30)  # sparse: reads cost the kernel a copy of zeros per byte
    g = guest(Blk("blk0", str(disk)))
    g.drv.start()
    q = g.drv.queues[0]
    hdr, status = g.drv.alloc.alloc(16), g.drv.alloc.alloc(1)
    g.mem.write(hdr, struct.pack("<IIQ", 0, 0, 0))  # VIRTIO_BLK_T_IN, sector 0
    for halves, want in ((514, 1), (508, 0)):  # status: IOERR, then OK
        (done,), cost = one_request(
            q, [(hdr, 16, 0), *aliased(halves, 512 * KiB, W), (status, 1, W)]
        )
        assert g.mem.read(status, 1)[0] == want
        if want:
            assert done.length == 1 and cost.cpu_s < 0.05
        else:
            assert done.length == 254 * MiB + 1


def test_host_cost_sees_a_transient_allocation() -> None:
    """The measurement itself works: memory allocated and freed inside the block counts."""
    with HostCost() as cost:
        junk = os.urandom(16 * MiB)
        del junk
    assert cost.peak_mib >= 15

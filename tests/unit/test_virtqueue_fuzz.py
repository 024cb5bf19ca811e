"""Seeded fuzzing of the virtqueue and the blk device with random descriptor tables and rings.

Guest memory has holes and adjacent regions, and every region's host mapping is one page longer
than the region: that tail page is a canary the host must never touch (a stray slice with a
negative or too-large offset would land there). Every case is also measured: the host's peak
RSS growth and the CPU time of one case stay under ``CASE_MIB`` and ``CASE_CPU_S`` (what one
guest request may cost the host, docs/virtio.md). Each case is reproducible from its seed.

The long fuzzers cover 60,000 seeds each (``SVLAUNCH_LONG=1``, ``-m long``); the normal suite,
CI included, runs the first ``SLICE`` of each, 20,000 cases in all.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
from pathlib import Path

import pytest
from virtio_driver import Allocator, Driver, HostCost

from engine.machine.memory import GuestMemory, GuestRegion
from engine.virtio import mmio as M
from engine.virtio import mmio_regs as R
from engine.virtio.blk import Blk
from engine.virtio.device import VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC
from engine.virtio.queue import Queue, QueueError

KiB = 1 << 10
CANARY = 4096
PATTERN = b"\xa5" * CANARY
# Buffers land in A, B, C (B and C adjacent, a hole between A and B). The rings live in their
# own region D, which buffers reach only on the descriptor table and avail ring (a driver that
# aims buffers at its own used ring only corrupts itself, and would defeat the used-ring checks).
REGIONS = [(0, 256 * KiB), (1024 * KiB, 256 * KiB), (1280 * KiB, 256 * KiB)]
RING_REGION = (2048 * KiB, 64 * KiB)
RING_BASE = RING_REGION[0] + 0x1000
DESC = struct.Struct("<QIHH")


def canary_memory() -> GuestMemory:
    regions = []
    for addr, size in [*REGIONS, RING_REGION]:
        m = mmap.mmap(-1, size + CANARY, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m[size:] = PATTERN
        regions.append(GuestRegion(addr, size, m))
    return GuestMemory(regions)


def assert_canaries(mem: GuestMemory, seed: int) -> None:
    for r in mem.regions:
        assert r.mapping[r.size :] == PATTERN, (
            f"seed {seed}: host wrote outside region {r.guest_addr:#x}"
        )


def interesting_addr(rng: random.Random) -> int:
    kind = rng.randrange(10)
    if kind < 5:  # somewhere in RAM
        base, size = rng.choice(REGIONS)
        return base + rng.randrange(size)
    if kind == 5:  # just before a region end
        base, size = rng.choice(REGIONS)
        return base + size - rng.randrange(1, 64)
    if kind == 6:  # the hole, or past the end of RAM
        return rng.choice([300 * KiB, 1000 * KiB, 1536 * KiB, 1 << 32]) + rng.randrange(4096)
    if kind == 7:
        return (1 << 64) - rng.randrange(1, 4096)
    if kind == 8:
        return 0
    return RING_BASE + rng.randrange(0x6000)  # on top of the descriptor table or avail ring


def interesting_len(rng: random.Random) -> int:
    return rng.choice(
        [
            0,
            1,
            15,
            16,
            17,
            32,
            48,
            512,
            513,
            4096,
            65536,
            300 * KiB,
            0xFFFFFFFF,
            rng.randrange(1 << 32),
        ]
    )


def random_desc(rng: random.Random, size: int) -> bytes:
    flags = rng.randrange(8) | (rng.randrange(1 << 16) if rng.random() < 0.05 else 0)
    nxt = rng.randrange(size + 2) if rng.random() < 0.95 else rng.randrange(1 << 16)
    return DESC.pack(interesting_addr(rng), interesting_len(rng), flags & 0xFFFF, nxt)


def plausible_chain(mem: GuestMemory, rng: random.Random, size: int, desc: int, head: int) -> None:
    """A well-formed blk-like chain at ``head`` (header, data, status), sometimes with one flaw."""
    n = rng.randrange(1, 5)
    ids = [head] + [rng.randrange(size) for _ in range(n - 1)]
    for k, i in enumerate(ids):
        last = k == n - 1
        base, rsize = rng.choice(REGIONS)
        length = 16 if k == 0 else 1 if last else rng.choice([512, 1024, 4096, 3])
        addr = base + rng.randrange(rsize - length)
        flags = (0 if k == 0 else 2) | (0 if last else 1)
        nxt = 0 if last else ids[k + 1]
        if k == 0:
            sector = rng.choice([0, 1, 7, 127, 128, 1 << 40])
            mem.write(addr, struct.pack("<IIQ", rng.choice([0, 1, 4, 8, 11, 13, 99]), 0, sector))
        mem.write(desc + 16 * i, DESC.pack(addr, length, flags, nxt))
    if rng.random() < 0.3:
        mem.write(desc + 16 * rng.choice(ids), random_desc(rng, size))


def scribble(mem: GuestMemory, rng: random.Random, size: int, desc: int, avail: int) -> None:
    """Random descriptors, indirect tables, plausible chains, and avail entries."""
    for i in range(size):
        mem.write(desc + 16 * i, random_desc(rng, size))
    for _ in range(rng.randrange(4)):  # an indirect table somewhere in RAM
        base, rsize = rng.choice(REGIONS)
        addr = base + rng.randrange(rsize - 16 * 8) & ~15
        for j in range(rng.randrange(1, 8)):
            mem.write(addr + 16 * j, random_desc(rng, 8))
        mem.write(desc + 16 * rng.randrange(size), DESC.pack(addr, 16 * rng.randrange(1, 9), 4, 0))
    bad_heads = 0.01 if rng.random() < 0.2 else 0.0
    for i in range(size):
        head = rng.randrange(size) if rng.random() >= bad_heads else rng.randrange(size, 1 << 16)
        mem.write_u16(avail + 4 + 2 * i, head)
        if rng.random() < 0.5:
            plausible_chain(mem, rng, size, desc, head % size)
    mem.write_u16(avail, rng.randrange(2))  # flags
    mem.write_u16(avail + 4 + 2 * size, rng.randrange(1 << 16))  # used_event


def avail_idx(rng: random.Random, size: int, base: int) -> int:
    return (
        base + (rng.randrange(size + 1) if rng.random() < 0.97 else rng.randrange(1 << 16))
    ) & 0xFFFF


def queue_case(mem: GuestMemory, seed: int) -> None:
    rng = random.Random(seed)
    mem.fill(RING_BASE, 0x9000)
    size = 1 << rng.randrange(9)
    q = Queue(256)
    q.size = size if rng.random() < 0.95 else rng.randrange(300)
    desc, avail, used = RING_BASE, RING_BASE + 0x4000, RING_BASE + 0x6000
    placed = rng.random() < 0.1
    if placed:
        desc, avail, used = (interesting_addr(rng) for _ in range(3))
    q.desc_addr, q.avail_addr, q.used_addr = desc, avail, used
    try:
        q.activate(mem, event_idx=rng.random() < 0.5, indirect=rng.random() < 0.7)
    except QueueError:
        return
    scribble(mem, rng, size, desc, avail)
    mem.write_u16(avail + 2, avail_idx(rng, size, 0))
    try:
        for _ in range(size + 2):
            chain = q.pop()
            if chain is None:
                break
            assert chain.head < size
            for addr, n in chain.readable + chain.writable:
                assert mem.check_range(addr, n)
            assert chain.readable_len + chain.writable_len < 1 << 32
            written = rng.randrange(chain.writable_len + 1) if chain.writable_len else 0
            if chain.writable_len:
                chain.write(mem, bytes(min(written, 4096)))
            q.add_used(chain, written)
            q.needs_notification()
    except QueueError:
        pass
    if placed:
        return  # rings among the buffers: the driver may have clobbered its own used ring
    n_used = mem.read_u16(used + 2)
    for i in range(min(n_used, size)):
        head, _length = struct.unpack("<II", mem.read(used + 4 + 8 * i, 8))
        assert head < size, f"seed {seed}: used head {head}"


class BlkEnv:
    def __init__(self, tmp: Path) -> None:
        disk = tmp / "fuzz.raw"
        disk.write_bytes(os.urandom(64 * KiB))
        self.mem = canary_memory()
        self.dev = Blk("fuzz", str(disk), discard=True, num_queues=1, queue_size=256)
        self.t = M.MmioTransport(self.dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(RING_BASE, RING_BASE + 0x9000))

    def case(self, seed: int) -> None:
        rng = random.Random(seed)
        drv, t = self.drv, self.t
        drop = 0
        if rng.random() < 0.5:
            drop |= 1 << VIRTIO_F_RING_EVENT_IDX
        if rng.random() < 0.3:
            drop |= 1 << VIRTIO_F_RING_INDIRECT_DESC
        drv.negotiate(drop=drop)
        self.mem.fill(RING_BASE, 0x9000)
        size = 1 << rng.randrange(9)
        desc, avail, used = RING_BASE, RING_BASE + 0x4000, RING_BASE + 0x6000
        placed = rng.random() < 0.05
        if placed:
            desc, avail, used = (interesting_addr(rng) for _ in range(3))
        drv.w(R.QUEUE_SEL, 0)
        drv.w(R.QUEUE_NUM, size if rng.random() < 0.97 else rng.randrange(1 << 16))
        for reg, addr in (
            (R.QUEUE_DESC_LOW, desc),
            (R.QUEUE_DRIVER_LOW, avail),
            (R.QUEUE_DEVICE_LOW, used),
        ):
            drv.w(reg, addr & 0xFFFFFFFF)
            drv.w(reg + 4, addr >> 32 & 0xFFFFFFFF)
        try:
            scribble(self.mem, rng, size, RING_BASE, RING_BASE + 0x4000)
        except Exception:
            pass
        self.mem.write_u16(RING_BASE + 0x4002, avail_idx(rng, size, 0))
        drv.w(R.QUEUE_READY, 1)
        drv.driver_ok()  # activation kicks the queue once
        for _ in range(rng.randrange(3)):
            self.mem.write_u16(
                RING_BASE + 0x4002, avail_idx(rng, size, self.t.queues[0].next_avail)
            )
            t.notify(0)
        if rng.random() < 0.2:
            t.write(R.QUEUE_NOTIFY, 4, rng.randrange(3))
        if (
            not placed
            and t.status & R.STATUS_DRIVER_OK
            and not t.status & R.STATUS_DEVICE_NEEDS_RESET
        ):
            used_idx = self.mem.read_u16(RING_BASE + 0x6002)
            assert used_idx == t.queues[0].next_used, f"seed {seed}"

    def close(self) -> None:
        self.t.close()
        self.mem.close()


QUEUE_SEEDS = range(1_000_000, 1_060_000)
BLK_SEEDS = range(2_000_000, 2_060_000)
SLICE = 10_000
#: What one case (a handful of requests) may cost the host: peak RSS growth, CPU seconds.
CASE_MIB = 8
CASE_CPU_S = 0.25


def check_cost(cost: HostCost, seed: int) -> None:
    assert cost.peak_mib < CASE_MIB, f"seed {seed}: host RSS grew {cost.peak_mib:.1f} MiB"
    assert cost.cpu_s < CASE_CPU_S, f"seed {seed}: {cost.cpu_s:.3f} s of CPU"


def run_queue_cases(seeds: range) -> None:
    mem = canary_memory()
    try:
        for seed in seeds:
            with HostCost(trace=False) as cost:
                queue_case(mem, seed)
            check_cost(cost, seed)
            if seed % 97 == 0:
                assert_canaries(mem, seed)
        assert_canaries(mem, seeds[-1])
    finally:
        mem.close()


def run_blk_cases(tmp: Path, seeds: range) -> None:
    env = BlkEnv(tmp)
    try:
        for seed in seeds:
            with HostCost(trace=False) as cost:
                env.case(seed)
            check_cost(cost, seed)
            if seed % 97 == 0:
                assert_canaries(env.mem, seed)
        assert_canaries(env.mem, seeds[-1])
    finally:
        env.close()


def test_fuzz_queue_slice() -> None:
    run_queue_cases(QUEUE_SEEDS[:SLICE])


def test_fuzz_blk_slice(tmp_path: Path) -> None:
    run_blk_cases(tmp_path, BLK_SEEDS[:SLICE])


@pytest.mark.long
def test_fuzz_queue_long() -> None:
    run_queue_cases(QUEUE_SEEDS[SLICE:])


@pytest.mark.long
def test_fuzz_blk_long(tmp_path: Path) -> None:
    run_blk_cases(tmp_path, BLK_SEEDS[SLICE:])


def test_canaries_catch_a_stray_write() -> None:
    """The canary check itself works: a write past a region's end through the raw mapping fails it."""
    mem = canary_memory()
    try:
        r = mem.regions[0]
        r.mapping[r.size + 10] = 0
        with pytest.raises(AssertionError, match="outside region"):
            assert_canaries(mem, -1)
    finally:
        mem.close()

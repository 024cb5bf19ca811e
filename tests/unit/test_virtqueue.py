"""The split virtqueue against a hostile driver: one test per malformed ring or chain.

Each check of the validator (engine/virtio/queue.py, listed in docs/virtio.md) has a case here
that breaks exactly that rule; tests/unit/test_virtio_chain.py compares the validator with an
independent model on random tables, tests/unit/test_virtqueue_fuzz.py throws random rings at it.
"""

from __future__ import annotations

import struct

import pytest

from engine.machine.memory import GuestMemory
from engine.virtio.queue import (
    MAX_CHAIN_BUFFERS,
    MAX_INDIRECT_ENTRIES,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Queue,
    QueueError,
)

DESC = struct.Struct("<QIHH")
N, W, IND = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
MiB = 1 << 20


class Ring:
    """Hand-built rings at fixed addresses: desc 0x1000, avail 0x10000, used 0x20000."""

    def __init__(
        self, mem: GuestMemory, size: int = 16, *, indirect: bool = True, event_idx: bool = False
    ):
        self.mem = mem
        self.size = size
        self.q = Queue(max(size, 256))
        self.q.size = size
        self.q.desc_addr, self.q.avail_addr, self.q.used_addr = 0x1000, 0x10000, 0x20000
        self.q.ready = True
        self.q.activate(mem, indirect=indirect, event_idx=event_idx)
        self.idx = 0

    def desc(
        self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int = 0x1000
    ) -> None:
        self.mem.write(table + 16 * i, DESC.pack(addr, length, flags, nxt))

    def offer(self, head: int) -> None:
        self.mem.write_u16(0x10000 + 4 + 2 * (self.idx % self.size), head)
        self.idx = (self.idx + 1) & 0xFFFF
        self.mem.write_u16(0x10002, self.idx)

    def used(self) -> list[tuple[int, int]]:
        n = self.mem.read_u16(0x20002)
        return [
            struct.unpack("<II", self.mem.read(0x20004 + 8 * (i % self.size), 8)) for i in range(n)
        ]


@pytest.fixture
def mem() -> GuestMemory:
    # Two adjacent regions, a hole, and a high region.
    m = GuestMemory.anonymous([(0, 4 * MiB), (4 * MiB, 4 * MiB), (16 * MiB, 1 * MiB)])
    yield m
    m.close()


def test_valid_chain_splits_by_direction(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x100000, 16, N, 1)
    r.desc(1, 0x100100, 512, N | W, 2)
    r.desc(2, 0x100400, 1, W)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and chain.head == 0
    assert chain.readable == [(0x100000, 16)]
    assert chain.writable == [(0x100100, 512), (0x100400, 1)]
    assert (chain.readable_len, chain.writable_len) == (16, 513)
    r.q.add_used(chain, 513)
    assert r.used() == [(0, 513)]
    assert r.q.pop() is None


def test_buffer_spanning_adjacent_regions_is_accepted(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 4 * MiB - 100, 200, W)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and chain.writable == [(4 * MiB - 100, 200)]
    assert chain.write(mem, b"x" * 200) == 200
    assert mem.read(4 * MiB - 100, 200) == b"x" * 200


@pytest.mark.parametrize(
    ("descs", "why"),
    [
        ([(0x100000, 16, N, 1), (0x100100, 16, N, 0)], "loop"),
        ([(0x100000, 16, N, 1), (0x100100, 16, N, 1)], "self loop"),
        ([(0x100000, 16, N, 99)], "next out of range"),
        ([(9 * MiB, 16, 0, 0)], "buffer in the hole"),
        ([(16 * MiB + MiB - 8, 16, 0, 0)], "buffer past the end of RAM"),
        ([((1 << 64) - 8, 16, 0, 0)], "address wraps 2^64"),
        ([(0x100000, 16, W | N, 1), (0x100100, 16, 0, 0)], "readable after writable"),
        ([(0x100000, 33, IND, 0)], "indirect length not a multiple of 16"),
        ([(0x100000, 0, IND, 0)], "empty indirect table"),
        ([(0x100000, 32, IND | N, 1), (0x100100, 16, 0, 0)], "indirect with NEXT"),
        ([(9 * MiB, 32, IND, 0)], "indirect table outside RAM"),
        ([((1 << 64) - 16, 32, IND, 0)], "indirect table wraps 2^64"),
        ([(0x300000, 16 * (MAX_INDIRECT_ENTRIES + 1), IND, 0)], "indirect table too long"),
        ([(0x100000, 0, W | N, 1), (0x100100, 16, 0, 0)], "readable after a zero-length writable"),
        ([(16 * MiB, MiB + 1, 0, 0)], "buffer one byte past the end of RAM"),
    ],
)
def test_malformed_chain_fails_only_that_request(mem: GuestMemory, descs: list, why: str) -> None:
    r = Ring(mem)
    for i, d in enumerate(descs):
        r.desc(i, *d)
    r.offer(0)
    # A good chain after the bad one is still served.
    r.desc(10, 0x200000, 8, W)
    r.offer(10)
    chain = r.q.pop()
    assert chain is not None and chain.head == 10, why
    assert r.q.errors == 1
    assert r.used() == [(0, 0)]


def test_nested_indirect_is_rejected(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x300000, 32, IND)
    r.desc(0, 0x100000, 16, N, 1, table=0x300000)
    r.desc(1, 0x310000, 16, IND, 0, table=0x300000)
    r.offer(0)
    assert r.q.pop() is None and r.q.errors == 1


def test_indirect_table_is_followed(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x300000, 48, IND)
    r.desc(0, 0x100000, 16, N, 2, table=0x300000)
    r.desc(2, 0x100100, 64, N | W, 1, table=0x300000)
    r.desc(1, 0x100200, 1, W, 0, table=0x300000)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None
    assert chain.readable == [(0x100000, 16)]
    assert chain.writable == [(0x100100, 64), (0x100200, 1)]


def test_indirect_loop_is_stopped_by_ttl(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x300000, 32, IND)
    r.desc(0, 0x100000, 16, N, 1, table=0x300000)
    r.desc(1, 0x100000, 16, N, 0, table=0x300000)
    r.offer(0)
    assert r.q.pop() is None and r.q.errors == 1


def test_indirect_without_the_feature_is_rejected(mem: GuestMemory) -> None:
    r = Ring(mem, indirect=False)
    r.desc(0, 0x300000, 16, IND)
    r.desc(0, 0x100000, 16, 0, 0, table=0x300000)
    r.offer(0)
    assert r.q.pop() is None and r.q.errors == 1


def test_head_out_of_range_breaks_the_queue(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.offer(16)
    with pytest.raises(QueueError, match="head descriptor 16"):
        r.q.pop()


def test_avail_index_jump_breaks_the_queue(mem: GuestMemory) -> None:
    r = Ring(mem)
    mem.write_u16(0x10002, 17)
    with pytest.raises(QueueError, match="more than the queue size"):
        r.q.pop()


def test_chain_of_4gib_is_rejected() -> None:
    big = GuestMemory.anonymous([(0, 3 << 30)])
    try:
        r = Ring(big)
        r.desc(0, 0, 0xC000_0000, N, 1)
        r.desc(1, 0, 0x4000_0000, 0)
        r.offer(0)
        assert r.q.pop() is None and r.q.errors == 1
    finally:
        big.close()


def test_too_many_buffers_are_rejected(mem: GuestMemory) -> None:
    r = Ring(mem, size=2048)
    q = r.q
    q.reset()
    q.size = 2048
    q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x10000, 0x20000
    q.max_size = 2048
    q.activate(mem)
    for i in range(MAX_CHAIN_BUFFERS + 1):
        r.desc(i, 0x400000 + i, 1, N, i + 1)
    r.desc(MAX_CHAIN_BUFFERS + 1, 0x400000, 1, 0)
    r.offer(0)
    assert q.pop() is None and q.errors == 1


def test_zero_length_buffers_are_skipped(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 9 * MiB, 0, N, 1)  # in the hole, but empty: touches nothing
    r.desc(1, 0x100000, 4, W)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and chain.readable == [] and chain.writable == [(0x100000, 4)]


def test_used_length_is_clamped_to_the_writable_length(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x100000, 8, W)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None
    r.q.add_used(chain, 1 << 20)
    assert r.used() == [(0, 8)]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("size", 12, "power of two"),
        ("size", 512, "power of two"),
        ("size", 0, "power of two"),
        ("desc_addr", 0x1008, "not 16-byte aligned"),
        ("avail_addr", 0x10001, "not 2-byte aligned"),
        ("used_addr", 0x20002, "not 4-byte aligned"),
        ("desc_addr", 9 * MiB, "outside guest RAM"),
        ("used_addr", 17 * MiB - 8, "outside guest RAM"),
        ("avail_addr", (1 << 64) - 2, "outside guest RAM"),
    ],
)
def test_ring_placement_is_validated(mem: GuestMemory, field: str, value: int, match: str) -> None:
    q = Queue(256)
    q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x10000, 0x20000
    q.size = 16
    assert q.validate(mem) is None
    setattr(q, field, value)
    assert match in (q.validate(mem) or "")
    with pytest.raises(QueueError):
        q.activate(mem)


def test_no_interrupt_flag_is_honoured(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x100000, 8, W)
    r.offer(0)
    r.q.add_used(r.q.pop(), 0)
    assert r.q.needs_notification()
    assert not r.q.needs_notification()  # nothing new
    mem.write_u16(0x10000, VIRTQ_AVAIL_F_NO_INTERRUPT)
    r.offer(0)
    r.q.add_used(r.q.pop(), 0)
    assert not r.q.needs_notification()


def test_event_idx_suppresses_interrupts_and_kicks(mem: GuestMemory) -> None:
    r = Ring(mem, event_idx=True)
    used_event = 0x10000 + 4 + 2 * r.size
    avail_event = 0x20000 + 4 + 8 * r.size
    for i in range(4):
        r.desc(i, 0x100000 + 64 * i, 8, W)
        r.offer(i)
    mem.write_u16(used_event, 2)  # interrupt me once used.idx passes 2
    got = []
    while (chain := r.q.pop()) is not None:
        r.q.add_used(chain, 0)
        got.append(r.q.needs_notification())
    assert got == [False, False, True, False]
    # The drained queue asked for a kick at the next avail entry.
    assert mem.read_u16(avail_event) == 4


def test_chained_descriptors_then_an_indirect_table_are_one_chain(mem: GuestMemory) -> None:
    """§2.7.5.3.2: "zero or more normal chained descriptors followed by a single descriptor
    with flags&VIRTQ_DESC_F_INDIRECT"; the WRITE flag on that descriptor is ignored."""
    r = Ring(mem)
    r.desc(0, 0x100000, 16, N, 5)
    r.desc(5, 0x300000, 32, IND | W)
    r.desc(0, 0x100100, 8, N, 1, table=0x300000)
    r.desc(1, 0x100200, 4, W, 0, table=0x300000)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and chain.head == 0
    assert chain.readable == [(0x100000, 16), (0x100100, 8)]
    assert chain.writable == [(0x100200, 4)]


def test_indirect_next_outside_the_table_is_rejected(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x300000, 32, IND)
    r.desc(0, 0x100000, 16, N, 2, table=0x300000)  # the table has entries 0 and 1
    r.desc(1, 0x100100, 16, 0, 0, table=0x300000)
    r.offer(0)
    assert r.q.pop() is None and r.q.errors == 1


def test_aliasing_buffers_are_a_valid_chain(mem: GuestMemory) -> None:
    """The spec does not forbid buffers that overlap: the chain is valid, and its length may
    exceed guest RAM. Devices bound what they do with it (tests/unit/test_virtio_bounds.py)."""
    r = Ring(mem, size=256)
    r.desc(0, 0x300000, 16 * 1024, IND)
    for i in range(1024):
        r.desc(i, 0, MiB, N if i < 1023 else 0, i + 1, table=0x300000)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and chain.readable_len == 1024 * MiB
    assert len(chain.readable) == 1024 and set(chain.readable) == {(0, MiB)}


def test_a_chain_of_exactly_the_buffer_limit_is_accepted(mem: GuestMemory) -> None:
    r = Ring(mem)
    r.desc(0, 0x300000, 16 * MAX_CHAIN_BUFFERS, IND)
    for i in range(MAX_CHAIN_BUFFERS):
        last = i == MAX_CHAIN_BUFFERS - 1
        r.desc(i, 0x400000 + i, 1, 0 if last else N, i + 1, table=0x300000)
    r.offer(0)
    chain = r.q.pop()
    assert chain is not None and len(chain.readable) == MAX_CHAIN_BUFFERS


def test_the_chain_is_a_snapshot(mem: GuestMemory) -> None:
    """What the checks saw is what the device uses: rewriting the table after pop changes
    nothing (the indirect table is copied out once)."""
    r = Ring(mem)
    r.desc(0, 0x300000, 16, IND)
    r.desc(0, 0x100000, 16, 0, 0, table=0x300000)
    r.offer(0)
    chain = r.q.pop()
    r.desc(0, 9 * MiB, 1 << 20, 0, 0, table=0x300000)  # now outside RAM
    assert chain is not None and chain.readable == [(0x100000, 16)]
    assert chain.read(mem, 0, 16) == mem.read(0x100000, 16)


def test_avail_index_going_backwards_breaks_the_queue(mem: GuestMemory) -> None:
    """§2.7.6.1: the driver "MUST NOT decrement the available idx"; to the device a step back
    is a jump of 65535 entries."""
    r = Ring(mem)
    r.desc(0, 0x100000, 8, W)
    r.offer(0)
    r.q.add_used(r.q.pop(), 0)
    mem.write_u16(0x10002, 0)
    with pytest.raises(QueueError, match="more than the queue size"):
        r.q.pop()


def test_rings_may_span_adjacent_regions(mem: GuestMemory) -> None:
    """A used ring across the seam of two regions (4 MiB): every ring access still goes through
    GuestMemory, which serves a range over adjacent regions."""
    q = Queue(256)
    q.size = 256
    q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x10000, 4 * MiB - 0x408
    q.activate(mem)
    mem.write(0x1000, DESC.pack(0x100000, 8, W, 0))
    for i in range(130):  # past the used ring's seam: element 128 straddles it
        mem.write_u16(0x10000 + 4 + 2 * (i % 256), 0)
        mem.write_u16(0x10002, i + 1)
        chain = q.pop()
        assert chain is not None
        q.add_used(chain, 8)
    assert mem.read_u16(q.used_addr + 2) == 130
    assert q.used_addr + 4 + 8 * 128 == 4 * MiB - 4  # this element straddles the seam
    assert struct.unpack("<II", mem.read(q.used_addr + 4 + 8 * 128, 8)) == (0, 8)

"""The chain validator against an independent model, and a chain's accessors against flat bytes.

``model_chain`` below is the virtio 1.2 §2.7 rules written the plain way (follow ``next`` with a
set of visited entries, then check the list of descriptors), sharing no code with
engine/virtio/queue.py. On random, mostly well-formed tables with hostile bytes poked in,
``Queue.pop`` must accept exactly what the model accepts, with the same buffers. Then a chain's
``read``/``write``/views/``host_iovec`` must name exactly the bytes a flat model of its buffers
names, for any offset and length.
"""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.machine.memory import GuestMemory
from engine.virtio.chain import DescriptorChain
from engine.virtio.mmio import MmioTransport
from engine.virtio.mmio_regs import INT_CONFIG, INT_VRING
from engine.virtio.queue import MAX_CHAIN_BUFFERS, MAX_INDIRECT_ENTRIES, Queue

DESC = struct.Struct("<QIHH")
N, W, IND = 1, 2, 4
MiB = 1 << 20
SIZE = 16
RING, AVAIL, USED = 0x1000, 0x2000, 0x3000
TABLES = (0x8000, 0xC000)  # where indirect tables go
# Two adjacent regions (0-4 MiB, 4-8 MiB), a hole, and a high region (16-17 MiB).
REGIONS = [(0, 4 * MiB), (4 * MiB, 4 * MiB), (16 * MiB, MiB)]


@pytest.fixture(scope="module")
def mem() -> GuestMemory:
    m = GuestMemory.anonymous(REGIONS)
    for i, (addr, size) in enumerate(REGIONS):
        m.write(addr, bytes((i + b) % 256 for b in range(256)) * (size // 256))
    yield m
    m.close()


def model_chain(mem: GuestMemory, head: int, indirect_ok: bool) -> tuple[list, list] | None:
    """The chain at ``head`` by the spec's rules, or None where a rule is broken."""
    table, n, seen, nested = RING, SIZE, set(), False
    descs = []  # (addr, len, writable) in chain order
    idx = head
    while True:
        if idx >= n or idx in seen:  # next outside the table, or a loop (§2.7.5, §2.7.5.2)
            return None
        seen.add(idx)
        addr, length, flags, nxt = DESC.unpack(mem.read(table + 16 * idx, 16))
        if flags & IND:  # §2.7.5.3, §2.7.5.3.1
            if nested or not indirect_ok or flags & N or not length or length % 16:
                return None
            if length // 16 > MAX_INDIRECT_ENTRIES or not mem.check_range(addr, length):
                return None
            table, n, seen, nested, idx = addr, length // 16, set(), True, 0
            continue
        descs.append((addr, length, bool(flags & W)))
        if not flags & N:
            break
        idx = nxt
    writes = [w for _, _, w in descs]
    if writes != sorted(writes):  # §2.7.4.2: readable ones first
        return None
    if sum(length for _, length, _ in descs) >= 1 << 32:  # §2.7.5.2
        return None
    bufs = [(a, length, w) for a, length, w in descs if length]
    if len(bufs) > MAX_CHAIN_BUFFERS or not all(mem.check_range(a, n) for a, n, _ in bufs):
        return None
    return [(a, n) for a, n, w in bufs if not w], [(a, n) for a, n, w in bufs if w]


def pop_one(mem: GuestMemory, head: int, indirect_ok: bool) -> DescriptorChain | None:
    q = Queue(SIZE)
    q.desc_addr, q.avail_addr, q.used_addr = RING, AVAIL, USED
    q.activate(mem, indirect=indirect_ok)
    mem.write(AVAIL, struct.pack("<HHH", 0, 1, head))
    mem.write(USED, bytes(6))
    return q.pop()


ADDRS = st.one_of(
    st.integers(0x100000, 4 * MiB - 1),  # region 0, clear of the rings and tables
    st.integers(4 * MiB - 8192, 4 * MiB + 4096),  # around the adjacent-region seam
    st.integers(8 * MiB - 8192, 8 * MiB + 4096),  # around the hole
    st.integers(17 * MiB - 8192, 17 * MiB + 4096),  # around the end of RAM
    st.integers(0, (1 << 64) - 1),  # anything
)
LENS = st.one_of(st.integers(0, 8192), st.sampled_from([0xFFFF_FFFF, 1 << 31]))
ENTRY = st.tuples(ADDRS, LENS, st.booleans())


@st.composite
def tables(draw) -> tuple[bytes, list[bytes], int, bool]:
    """A ring table and up to two indirect tables: chains linked in a random order, mostly
    well formed; then hostile bytes anywhere."""
    ring = bytearray(16 * SIZE)
    indirects = [bytearray(), bytearray()]

    def link(buf: bytearray, slots: list[int], entries: list) -> None:
        n_read = draw(st.integers(0, len(entries)))
        for k, (slot, (addr, length, _)) in enumerate(zip(slots, entries, strict=False)):
            more = k + 1 < len(slots)
            flags = (W if k >= n_read else 0) | (N if more else 0)
            nxt = slots[k + 1] if more else draw(st.integers(0, 0xFFFF))
            DESC.pack_into(buf, 16 * slot, addr, length, flags, nxt)

    order = draw(st.permutations(range(SIZE)))
    head = order[0]
    entries = draw(st.lists(ENTRY, min_size=1, max_size=6))
    link(ring, list(order[: len(entries)]), entries)
    if draw(st.booleans()):  # the chain ends in an indirect table
        which = draw(st.integers(0, 1))
        inner = draw(st.lists(ENTRY, min_size=1, max_size=12))
        indirects[which] = bytearray(16 * len(inner))
        link(indirects[which], list(draw(st.permutations(range(len(inner))))), inner)
        last = order[len(entries) - 1]
        DESC.pack_into(ring, 16 * last, TABLES[which], len(indirects[which]), IND, 0)
    for buf in (ring, *indirects):
        for _ in range(draw(st.integers(0, 2))):
            if buf:
                buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(ring), [bytes(t) for t in indirects], head, draw(st.booleans())


@settings(max_examples=600, deadline=None)
@given(case=tables())
def test_the_validator_accepts_exactly_what_the_spec_model_accepts(mem: GuestMemory, case) -> None:
    ring, indirects, head, indirect_ok = case
    mem.write(RING, ring)
    for addr, table in zip(TABLES, indirects, strict=True):
        mem.write(addr, table.ljust(0x4000, b"\0")[:0x4000])
    want = model_chain(mem, head, indirect_ok)
    got = pop_one(mem, head, indirect_ok)
    event("valid" if want is not None else "refused")
    if want is None:
        assert got is None, f"the validator accepted a chain the model refuses: {got}"
        assert mem.read(USED, 12) == struct.pack("<HHII", 0, 1, head, 0)  # returned, length 0
    else:
        assert got is not None, f"the validator refused a chain the model accepts: {want}"
        assert (got.readable, got.writable) == want


def test_the_path_cache_answers_as_the_walk_does(mem: GuestMemory) -> None:
    """A Linux-shaped table (header, 254 pages, status) whose header and status move, as they
    do with blk-mq's tags: every request gets its own buffers; a hostile change to the links
    is seen at once (the cache is keyed on them)."""
    q = Queue(SIZE)
    q.desc_addr, q.avail_addr, q.used_addr = RING, AVAIL, USED
    q.activate(mem, indirect=True)
    pages = [(0x100000 + 0x2000 * k, 4096) for k in range(254)]

    def offer(tag: int, bufs: list[tuple[int, int, int]]) -> DescriptorChain | None:
        table = b"".join(
            DESC.pack(a, n, f, k + 1 if f & N else 0) for k, (a, n, f) in enumerate(bufs)
        )
        mem.write(TABLES[0], table)
        mem.write(RING, DESC.pack(TABLES[0], len(table), IND, 0))
        mem.write(AVAIL + 4 + 2 * (tag % SIZE), b"\0\0")
        mem.write(AVAIL + 2, struct.pack("<H", tag + 1))
        return q.pop()

    for tag in range(4):
        hdr, status = 0x80000 + 64 * tag, 0x90000 + 64 * tag
        chain = offer(tag, [(hdr, 16, N), *[(a, n, N | W) for a, n in pages], (status, 1, W)])
        assert chain is not None
        assert chain.readable == [(hdr, 16)] and chain.writable == [*pages, (status, 1)]
    looped = [(0x80000, 16, N), *[(a, n, N | W) for a, n in pages], (0x90000, 1, W | N)]
    assert offer(4, looped) is None  # the last entry now links on: next 0 -> a loop
    assert q.errors == 1


# -- a chain's accessors --------------------------------------------------------------------------


def flat(mem: GuestMemory, bufs: list[tuple[int, int]]) -> list[int]:
    """Every guest address of the buffers laid end to end."""
    return [a + i for a, n in bufs for i in range(n)]


def host_base(mem: GuestMemory, addr: int) -> int:
    r = mem.find_region(addr)
    assert r is not None
    return r.host_addr + addr - r.guest_addr


SMALL_BUFS = st.lists(
    st.tuples(
        st.one_of(st.integers(0x100000, 0x200000), st.integers(4 * MiB - 64, 4 * MiB - 1)),
        st.integers(1, 80),
    ),
    min_size=0,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    rbufs=SMALL_BUFS,
    wbufs=SMALL_BUFS,
    offset=st.integers(-2, 500),
    length=st.none() | st.integers(-2, 500),
)
def test_accessors_name_exactly_the_bytes_asked_for(
    mem: GuestMemory, rbufs, wbufs, offset, length
) -> None:
    chain = DescriptorChain(
        0,
        [a for a, _ in rbufs],
        [n for _, n in rbufs],
        [a for a, _ in wbufs],
        [n for _, n in wbufs],
    )
    for writable, bufs in ((False, rbufs), (True, wbufs)):
        every = flat(mem, bufs)
        if offset < 0 or (length is not None and length <= 0):
            want = []
        else:
            want = every[offset:] if length is None else every[offset : offset + length]
        views = (chain.write_views if writable else chain.read_views)(mem, offset, length)
        iov = chain.host_iovec(mem, writable, offset, length)
        got_iov = list(struct.iter_unpack("<QQ", iov.data))
        host = [(ctypes.addressof(ctypes.c_char.from_buffer(v)), len(v)) for v in views]
        assert iov.count == len(got_iov) and iov.total == len(want)
        assert [h + i for h, n in got_iov for i in range(n)] == [host_base(mem, a) for a in want]
        assert [h + i for h, n in host for i in range(n)] == [host_base(mem, a) for a in want]
        if not writable and length is not None:
            assert chain.read(mem, offset, length) == bytes(mem.read(a, 1)[0] for a in want)
    if wbufs and length is not None and length > 0 and offset >= 0:
        before = {a: mem.read(a, 1) for a in flat(mem, wbufs)}
        try:
            data = bytes(range(256)) * 2
            n = chain.write(mem, data[:length], offset)
            every = flat(mem, wbufs)
            assert n == len(every[offset : offset + length])
            last = {}
            for k, a in enumerate(every[offset : offset + length]):
                last[a] = data[k]  # a later alias overwrites an earlier one
            assert all(mem.read(a, 1)[0] == v for a, v in last.items())
        finally:
            for a, b in before.items():
                mem.write(a, b)


def test_linux_shaped_request_has_one_iovec_entry_per_page(mem: GuestMemory) -> None:
    pages = [(0x100000 + 0x3000 * i, 4096) for i in range(254)]
    chain = DescriptorChain(0, [0x200], [16], [a for a, _ in pages] + [0x400], [4096] * 254 + [1])
    iov = chain.host_iovec(mem, True, 0, chain.writable_len - 1)  # blk: data, not status
    assert iov.count == 254 and iov.total == 254 * 4096
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem.view(0, 4 * MiB)))
    assert list(struct.iter_unpack("<QQ", iov.data)) == [(base + a, n) for a, n in pages]
    assert iov.aligned(4096) and not chain.host_iovec(mem, False).aligned(512)


def test_a_buffer_across_a_region_seam_is_two_iovec_entries(mem: GuestMemory) -> None:
    chain = DescriptorChain(0, [], [], [4 * MiB - 100], [200])
    iov = chain.host_iovec(mem, True)
    assert iov.count == 2 and iov.total == 200 and len(iov.pins) == 2
    (h0, n0), (h1, n1) = struct.iter_unpack("<QQ", iov.data)
    assert (n0, n1) == (100, 100)
    assert h0 == host_base(mem, 4 * MiB - 100) and h1 == host_base(mem, 4 * MiB)


def test_used_ring_acks_absorbed_by_the_kernel_keep_interrupt_status_bit_0() -> None:
    """With the InterruptACK ioeventfd registered, an ack of 1 never reaches the transport, so
    bit 0 reads as set while DRIVER_OK; a config ack still clears bit 1."""
    from engine.virtio.rng import Rng

    m = GuestMemory.anonymous([(0, MiB)])
    t = MmioTransport(Rng("rng0"), m)
    try:
        assert t.interrupt_status == 0
        t.ack_eventfd()
        t.status = 0x0F  # DRIVER_OK (and the rest) as the driver set it
        assert t.interrupt_status == INT_VRING
        t.raise_interrupt(INT_CONFIG)
        assert t.interrupt_status == INT_VRING | INT_CONFIG
        t.write(0x64, 4, INT_CONFIG | INT_VRING)
        assert t.interrupt_status == INT_VRING
    finally:
        t.close()
        m.close()

"""The bulk indirect-table path (engine/virtio/chain.py) against the careful descriptor walk.

``linear_table`` may only ever accept what the one-descriptor-at-a-time walk in queue.py accepts,
with the same buffers; everything else must fall through to that walk (and its errors). The
host iovec a blk request is served with must name exactly the bytes of the chain's views.
"""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import engine.virtio.queue as queue_mod
from engine.machine.memory import GuestMemory
from engine.virtio.bulk import TableMemo
from engine.virtio.chain import MAX_CHAIN_IOVECS, DescriptorChain, linear_table
from engine.virtio.hostiov import host_iovec
from engine.virtio.mmio import INT_CONFIG, INT_VRING, MmioTransport
from engine.virtio.queue import VIRTQ_DESC_F_INDIRECT, Queue

DESC = struct.Struct("<QIHH")
MiB = 1 << 20
TABLE = 0x8000
# Two adjacent regions (0-4 MiB, 4-8 MiB), a hole, and a high region (16-17 MiB).
REGIONS = [(0, 4 * MiB), (4 * MiB, 4 * MiB), (16 * MiB, MiB)]


@pytest.fixture(scope="module")
def mem() -> GuestMemory:
    m = GuestMemory.anonymous(REGIONS)
    for i, (addr, size) in enumerate(REGIONS):
        m.write(addr, bytes((i + b) % 256 for b in range(256)) * (size // 256))
    yield m
    m.close()


def walk(mem: GuestMemory, data: bytes, *, careful: bool) -> DescriptorChain | None:
    """Pop one chain whose head is an indirect descriptor to ``data`` (None: refused)."""
    mem.write(TABLE, data)
    q = Queue(16)
    q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x2000, 0x3000
    q.ready = True
    q.activate(mem, indirect=True)
    mem.write(0x1000, DESC.pack(TABLE, len(data), VIRTQ_DESC_F_INDIRECT, 0))
    mem.write(0x2000, struct.pack("<HHH", 0, 1, 0))
    mem.write(0x3000, bytes(6))
    saved = queue_mod.linear_table
    if careful:
        queue_mod.linear_table = lambda *_: None
    try:
        return q.pop()
    finally:
        queue_mod.linear_table = saved


def linux_table(bufs: list[tuple[int, int]], n_read: int, last_next: int = 0) -> bytes:
    """A table as Linux writes it: entry i -> i+1, readable (NEXT) then writable (NEXT|WRITE)."""
    out = []
    for i, (addr, length) in enumerate(bufs):
        flags = (0 if i < n_read else 2) | (1 if i + 1 < len(bufs) else 0)
        out.append(DESC.pack(addr, length, flags, i + 1 if i + 1 < len(bufs) else last_next))
    return b"".join(out)


ADDRS = st.one_of(
    st.integers(0, 4 * MiB - 1),  # region 0
    st.integers(4 * MiB - 8192, 4 * MiB + 4096),  # around the adjacent-region seam
    st.integers(8 * MiB - 8192, 8 * MiB + 4096),  # around the hole
    st.integers(17 * MiB - 8192, 17 * MiB + 4096),  # around the end of RAM
    st.integers(0, (1 << 64) - 1),  # anything
)
BUFS = st.lists(st.tuples(ADDRS, st.integers(0, 8192)), min_size=1, max_size=24)


def written(mem: GuestMemory, chain: DescriptorChain, data: bytes, skip: int) -> tuple:
    """What ``chain.write`` returns and leaves in the chain's buffers (memory restored after)."""
    before = [mem.read(a, n) for a, n in chain.writable]
    count = chain.write(mem, data, skip)
    after = [mem.read(a, n) for a, n in chain.writable]
    # Reverse order: where buffers overlap, the earliest snapshot (the original) lands last.
    for (a, _), old in reversed(list(zip(chain.writable, before, strict=True))):
        mem.write(a, old)
    return count, after


def host_ranges(views: list[memoryview]) -> list[tuple[int, int]]:
    return [(ctypes.addressof(ctypes.c_char.from_buffer(v)), len(v)) for v in views]


@settings(max_examples=300, deadline=None)
@given(
    bufs=BUFS,
    n_read=st.integers(0, 24),
    last_next=st.integers(0, 0xFFFF),
    poke=st.none() | st.tuples(st.integers(0, 24 * 16 - 1), st.integers(0, 255)),
)
def test_bulk_path_accepts_only_what_the_careful_walk_accepts(
    mem: GuestMemory, bufs, n_read, last_next, poke
) -> None:
    data = bytearray(linux_table(bufs, min(n_read, len(bufs)), last_next))
    if poke is not None and poke[0] < len(data):  # a hostile byte anywhere in the table
        data[poke[0]] = poke[1]
    data = bytes(data)
    fast = linear_table(mem, 0, data)
    careful = walk(mem, data, careful=True)
    event("bulk path" if fast is not None else "careful walk only")
    if fast is None:
        return  # the careful walk decides (tests/unit/test_virtqueue.py covers its verdicts)
    assert careful is not None, "the bulk path accepted a table the careful walk refuses"
    assert (fast.readable, fast.writable) == (careful.readable, careful.writable)
    assert (fast.readable_len, fast.writable_len) == (careful.readable_len, careful.writable_len)
    assert walk(mem, data, careful=False).readable == careful.readable  # pop() takes it too
    for writable, total in ((False, fast.readable_len), (True, fast.writable_len)):
        views = careful.write_views if writable else careful.read_views
        fast_views = fast.write_views if writable else fast.read_views
        for skip, length in ((0, None), (0, total - 1), (1, total - 2), (total - 1, 1)):
            if skip < 0 or (length is not None and length < 0):
                continue
            want = views(mem, skip, length)
            assert [bytes(v) for v in fast_views(mem, skip, length)] == [bytes(v) for v in want]
            if not writable:
                assert fast.read(mem, skip, length) == careful.read(mem, skip, length)
            elif length:  # a status byte, a payload: the same bytes land in the same places
                payload = (b"\xa5\x5a" * length)[:length]
                assert written(mem, fast, payload, skip) == written(mem, careful, payload, skip)
            iov = host_iovec(mem, fast, writable, skip, length)
            assert iov is not None
            got = list(struct.iter_unpack("<QQ", iov.data))
            assert got == host_ranges(want) and iov.count == len(got)
            assert iov.total == sum(n for _, n in got)


def test_linux_shaped_request_takes_the_bulk_path_and_its_iovec_covers_the_data(
    mem: GuestMemory,
) -> None:
    pages = [(0x100000 + 0x3000 * i, 4096) for i in range(254)]
    data = linux_table([(0x200, 16), *pages, (0x400, 1)], 1)
    chain = walk(mem, data, careful=False)
    assert chain is not None and chain.table is not None and chain.region is not None
    assert chain.readable == [(0x200, 16)] and chain.writable[-1] == (0x400, 1)
    iov = host_iovec(mem, chain, True, 0, chain.writable_len - 1)  # blk: data, not status
    assert iov is not None and iov.count == 254 and iov.total == 254 * 4096
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem.view(0, 4 * MiB)))
    assert list(struct.iter_unpack("<QQ", iov.data)) == [(base + a, n) for a, n in pages]
    assert iov.aligned(4096) and not host_iovec(mem, chain, False, 0, None).aligned(512)


@pytest.mark.parametrize(
    "why, table",
    [
        ("spans the seam of two regions", [(4 * MiB - 4096, 8192), (0x400, 1)]),
        ("reaches into the hole", [(8 * MiB - 4096, 8192), (0x400, 1)]),
        ("outside RAM", [(64 * MiB, 4096), (0x400, 1)]),
        ("zero length", [(0x1000, 0), (0x400, 1)]),
    ],
)
def test_odd_tables_go_to_the_careful_walk(mem: GuestMemory, why: str, table) -> None:
    assert linear_table(mem, 0, linux_table(table, 0)) is None, why


def test_table_longer_than_iov_max_goes_to_the_careful_walk(mem: GuestMemory) -> None:
    bufs = [(0x1000, 1)] * (MAX_CHAIN_IOVECS + 1)
    assert linear_table(mem, 0, linux_table(bufs, 0)) is None
    assert walk(mem, linux_table(bufs, 0), careful=True) is None  # refused there, too


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


def chain_facts(mem: GuestMemory, c: DescriptorChain | None) -> tuple | None:
    """Everything a device can learn from a chain: buffers, totals, host iovecs."""
    if c is None:
        return None
    iovs = []
    for writable, total in ((False, c.readable_len), (True, c.writable_len)):
        for skip, length in ((0, None), (0, total - 1), (1, total - 1), (total - 1, 1)):
            if skip < 0 or (length is not None and length < 0):
                continue
            iov = host_iovec(mem, c, writable, skip, length)
            iovs.append(None if iov is None else (iov.data, iov.count, iov.total))
    return c.readable, c.writable, c.readable_len, c.writable_len, c.region, iovs


IN_RAM = st.tuples(st.integers(0, 4 * MiB - 8192), st.integers(1, 8192))
MOSTLY_GOOD = st.one_of(IN_RAM, IN_RAM, IN_RAM, st.tuples(ADDRS, st.integers(0, 8192)))


@settings(max_examples=300, deadline=None)
@given(
    bufs=st.lists(MOSTLY_GOOD, min_size=3, max_size=12),
    n_read=st.integers(0, 12),
    ends=st.lists(MOSTLY_GOOD, min_size=2, max_size=2),
    poke=st.none() | st.tuples(st.integers(0, 12 * 16 - 1), st.integers(0, 255)),
)
def test_memo_accepts_exactly_what_the_full_checks_accept(
    mem: GuestMemory, bufs, n_read, ends, poke
) -> None:
    """A table whose body equals the last accepted one (new ends, as the request tag moves) is
    taken from the memo: the same verdict and the same buffers, totals and iovecs as the
    full checks give, for hostile ends and bodies alike."""
    memo = TableMemo()
    first = linux_table(bufs, min(n_read, len(bufs)))
    assert chain_facts(mem, linear_table(mem, 0, first, memo=memo)) == chain_facts(
        mem, linear_table(mem, 0, first)
    )
    again = bytearray(linux_table([ends[0], *bufs[1:-1], ends[1]], min(n_read, len(bufs))))
    if poke is not None and poke[0] < len(again):
        again[poke[0]] = poke[1]
    again = bytes(again)
    got = linear_table(mem, 1, again, memo=memo)
    event("memo hit" if got is not None and got.table_int == 0 else "memo miss")
    assert chain_facts(mem, got) == chain_facts(mem, linear_table(mem, 1, again))


def test_repeated_blk_table_comes_from_the_memo(mem: GuestMemory) -> None:
    """dd's 1 MiB reads: the same pages each time, header and status moving with the tag."""
    pages = [(0x100000 + 0x3000 * i, 4096) for i in range(254)]
    memo = TableMemo()
    for tag in range(3):
        data = linux_table([(0x200 + 64 * tag, 16), *pages, (0x400 + 64 * tag, 1)], 1)
        chain = linear_table(mem, tag, data, memo=memo)
        assert chain is not None and chain.table_int == (0 if tag else chain.table_int)
        assert chain_facts(mem, chain) == chain_facts(mem, linear_table(mem, tag, data))
    outside = linux_table([(64 * MiB, 16), *pages, (0x400, 1)], 1)  # header outside RAM
    assert linear_table(mem, 3, outside, memo=memo) is None

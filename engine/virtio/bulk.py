"""Big-integer checks over whole indirect tables, and the memo of the last table body.

Why: a 1 MiB read arrives as an indirect table of ~258 entries, and a Python int per entry
costs more than the request's other work (25x more in the nested rig, where L1 runs under
TCG). Read as one little-endian integer, a table has a 128-bit slot per entry (addr u64,
len u32, flags u16, next u16), and a handful of big-integer operations check every slot at
once: C loops over the digits, no object per entry. ``chain.linear_table`` uses these.

``TableMemo``: a program that reads with one buffer (dd, databases with O_DIRECT) sends the
same table body (every entry but the header's and the status byte's, which move with the
request's tag) request after request. The memo keeps the last body that passed the checks,
with its region, sums and host iovec, so an equal body is accepted with one byte compare and
only its two end entries are checked again: exactly the checks the full path makes.
"""

from __future__ import annotations

import struct

from engine.machine.memory import GuestRegion

_ENTRY = struct.Struct("<QI")  # addr, len (flags and next are checked on the whole table)
_IOV = struct.Struct("<QQ")


class _Masks(dict[int, int]):
    """``masks[k]``: the low k 128-bit slots (made on first use)."""

    def __missing__(self, k: int) -> int:
        m = self[k] = (1 << (128 * k)) - 1
        return m


class Consts:
    """Patterns for n-entry tables in one region (cached: built once per shape).

    Adding ``2**64 - lo`` to every address carries into bit 64 of its slot exactly when
    ``addr >= lo``; adding ``2**80 - hi - 1`` to every ``addr + len`` (< 2**65) carries into bit
    80 exactly when it exceeds ``hi``; adding ``2**32 - 1`` to every length carries into bit 32
    exactly when it is not zero. Slots are wide enough that no carry reaches a neighbour.
    ``delta``: host minus guest address in every slot, which turns a slot into a host
    ``struct iovec`` (base u64, len u64) once flags and next are masked off (``iov``).
    """

    __slots__ = ("addr", "delta", "hi", "iov", "len", "lo", "masks", "ones")

    def __init__(self, n: int, lo: int, hi: int, host: int) -> None:
        ones = sum(1 << (128 * i) for i in range(n))
        self.ones = ones
        self.addr = ((1 << 64) - 1) * ones
        self.len = ((1 << 32) - 1) * ones
        self.iov = ((1 << 96) - 1) * ones
        self.lo = ((1 << 64) - lo) * ones if lo else 0
        self.hi = ((1 << 80) - hi - 1) * ones
        self.delta = (host - lo) * ones  # < 0 borrows nothing: every address is >= lo
        self.masks = _Masks()


_consts: dict[tuple[int, int, int, int], Consts] = {}


def consts(n: int, region: GuestRegion) -> Consts:
    """The patterns for n-entry tables in ``region``."""
    key = (n, region.guest_addr, region.end, region.host_addr)
    k = _consts.get(key)
    if k is None:
        if len(_consts) >= 1024:
            _consts.clear()
        k = _consts[key] = Consts(n, region.guest_addr, region.end, region.host_addr)
    return k


def fit(t: int, n: int, region: GuestRegion) -> tuple[int, Consts] | None:
    """The lengths (one per slot) when every entry's ``[addr, addr+len)`` lies in ``region`` and
    no length is zero, for all n entries at once; None otherwise."""
    k = consts(n, region)
    ones = k.ones
    addrs = t & k.addr
    if k.lo and ((addrs + k.lo) >> 64) & ones != ones:
        return None
    lens = (t >> 64) & k.len
    if ((lens + k.len) >> 32) & ones != ones:
        return None
    if ((addrs + lens + k.hi) >> 80) & ones:
        return None
    return lens, k


def fold(x: int, n: int, masks: _Masks) -> int:
    """The sum of n 128-bit slots: halve the slot count until one is left (C-level adds)."""
    while n > 1:
        half = (n + 1) >> 1
        x = (x & masks[half]) + (x >> (128 * half))
        n = half
    return x


def host_table(t: int, n: int, region: GuestRegion) -> bytes:
    """The n-entry table ``t`` (checked to lie in ``region``) as host ``struct iovec``s."""
    k = consts(n, region)
    return ((t & k.iov) + k.delta).to_bytes(16 * n, "little")


class TableMemo:
    """The last table body (entries 1..n-2) that passed the checks, per queue (module doc)."""

    __slots__ = ("body", "host", "read_sum", "region", "split", "total")

    def __init__(self) -> None:
        self.body = b""
        self.split = -1
        self.region: GuestRegion | None = None
        self.total = 0
        self.read_sum = 0  # lengths of body entries before ``split``
        self.host = b""

    def remember(
        self, data: bytes, split: int, region: GuestRegion, total: int, readable: int, host: bytes
    ) -> None:
        """Keep a table the full checks accepted (its ends are dropped: they move)."""
        n = len(data) // 16
        l0 = _ENTRY.unpack_from(data, 0)[1]
        l1 = _ENTRY.unpack_from(data, 16 * n - 16)[1]
        self.body = data[16:-16]
        self.split = split
        self.region = region
        self.total = total - l0 - l1
        self.read_sum = readable - (l0 if split else 0) - (l1 if split == n else 0)
        self.host = host[16:-16]

    def recall(self, data: bytes, split: int) -> tuple[GuestRegion, int, int, bytes] | None:
        """``(region, total, readable, host table)`` for a table whose body is the remembered
        one (the same flags: ``split`` equal) and whose two end entries pass the same checks;
        None otherwise (then the full checks run)."""
        region = self.region
        if region is None or split != self.split or len(data) != len(self.body) + 32:
            return None
        if data[16:-16] != self.body:
            return None
        a0, l0 = _ENTRY.unpack_from(data, 0)
        a1, l1 = _ENTRY.unpack_from(data, len(data) - 16)
        lo, hi = region.guest_addr, region.end
        if not (l0 and l1 and lo <= a0 and a0 + l0 <= hi and lo <= a1 and a1 + l1 <= hi):
            return None
        total = l0 + self.total + l1
        if total >= 1 << 32:
            return None
        n = len(data) // 16
        readable = (l0 if split else 0) + self.read_sum + (l1 if split == n else 0)
        delta = region.host_addr - lo
        host = _IOV.pack(a0 + delta, l0) + self.host + _IOV.pack(a1 + delta, l1)
        return region, total, readable, host

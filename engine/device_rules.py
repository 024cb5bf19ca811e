"""What a virtio-blk or virtio-net device accepts, checked on plan values.

The engine builds device plans in two places: from the launcher's compiled plan (cold-plug) and
from QMP ``device_add`` (hot-plug). Both must accept exactly the same devices, so the limits are
declared here once, on the plan's own values; the launcher's manifest validation reads the same
limits (``launcher.validate.blk_net``) and reports them at the manifest key, and hot-plug reports
them as QMP errors. Ranges follow StratoVirt v2.2 (docs/stratovirt.md, "Drives"
and "NICs").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.plan import BlkPlan, NetPlan


@dataclass(frozen=True, slots=True)
class IntRange:
    """An inclusive integer range, optionally powers of two only."""

    low: int
    high: int
    pow2: bool = False

    def allows(self, value: int) -> bool:
        return self.low <= value <= self.high and (not self.pow2 or value & (value - 1) == 0)

    def describe(self) -> str:
        what = "a power of two between" if self.pow2 else "between"
        return f"{what} {self.low} and {self.high}"


BLK_QUEUE_SIZE = IntRange(4, 1024, pow2=True)
NET_QUEUE_SIZE = IntRange(256, 4096, pow2=True)
DEFAULT_QUEUE_SIZE = 256
BLK_QUEUES = IntRange(1, 32)
NET_QUEUE_PAIRS = IntRange(1, 16)
MAX_IOPS = 1_000_000
IOPS = IntRange(0, MAX_IOPS)
MAX_SERIAL = 20  # bytes: the virtio-blk GET_ID buffer
MAX_IFNAME = 15  # bytes: IFNAMSIZ - 1
AIO_MODES = ("native", "io_uring", "off")

_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")


def is_mac(value: str) -> bool:
    """StratoVirt's check: exactly six two-digit hex groups separated by ``:``."""
    return bool(_MAC_RE.match(value))


def default_mac(vm_name: str, net_id: str) -> str:
    """A stable locally administered MAC (52:54:00 prefix, as QEMU) from the VM and net ids."""
    import hashlib  # only here: it loads OpenSSL, a cost of every start (docs/performance.md)

    digest = hashlib.sha256(f"{vm_name}/{net_id}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def default_aio(direct: bool) -> str:
    """StratoVirt's default: native with O_DIRECT, synchronous without."""
    return "native" if direct else "off"


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: the plan field, the rule's code, what is wrong and what to do."""

    field: str
    code: str
    message: str
    hint: str


def queue_size_problem(value: int, limits: IntRange) -> Problem | None:
    if limits.allows(value):
        return None
    return Problem(
        "queue_size",
        "queue-size",
        f"queue-size {value} must be {limits.describe()}",
        f"{DEFAULT_QUEUE_SIZE} is the default",
    )


def serial_problem(serial: str | None) -> Problem | None:
    if serial is None or len(serial.encode()) <= MAX_SERIAL:
        return None
    return Problem(
        "serial",
        "drive-serial",
        f"serial is {len(serial.encode())} bytes; virtio-blk allows {MAX_SERIAL}",
        "shorten the serial",
    )


def aio_problem(aio: str, direct: bool) -> Problem | None:
    if aio not in AIO_MODES:
        return Problem("aio", "drive-aio", f"aio {aio!r} is not one of {AIO_MODES}", "")
    if aio == "native" and not direct:
        return Problem(
            "aio",
            "drive-aio",
            'aio = "native" needs direct = true',
            'set direct = true, or aio = "io_uring" / "off"',
        )
    if aio == "off" and direct:
        return Problem(
            "aio",
            "drive-aio",
            'direct = true with aio = "off" is rejected by StratoVirt (low performance)',
            'use aio = "native" or "io_uring", or set direct = false',
        )
    return None


def iops_problem(iops: int | None) -> Problem | None:
    if iops is None or IOPS.allows(iops):
        return None
    return Problem("iops", "drive-iops", f"iops {iops} is above the limit {MAX_IOPS}", "lower iops")


def mac_problem(mac: str | None) -> Problem | None:
    if mac is None or is_mac(mac):
        return None
    return Problem(
        "mac",
        "net-mac",
        f"mac {mac!r} is not six two-digit hex pairs separated by ':'",
        'write it like "52:54:00:12:34:56"',
    )


def ifname_problem(ifname: str | None) -> Problem | None:
    """A tap name Linux takes literally. ``%d`` is a template: the kernel creates the first
    free ``tapN`` instead, a persistent interface nobody would record or delete."""
    if ifname is None:
        return None
    if len(ifname.encode()) > MAX_IFNAME:
        return Problem(
            "ifname",
            "net-ifname",
            f"tap name {ifname!r} is {len(ifname.encode())} bytes; Linux allows {MAX_IFNAME}",
            "use a shorter name",
        )
    if "%" in ifname:
        return Problem(
            "ifname",
            "net-ifname",
            f"tap name {ifname!r} holds '%': Linux would create a numbered tap (tap%d -> tap0) "
            "that svlaunch cannot track or remove",
            "name the tap exactly, e.g. tap0",
        )
    if not ifname or ifname in (".", "..") or any(c in ifname for c in "/: \t\n\r\0"):
        return Problem(
            "ifname",
            "net-ifname",
            f"tap name {ifname!r} is not a valid interface name",
            "use letters, digits, '-' and '_' (no '/', ':', whitespace, '.' or '..')",
        )
    return None


def range_problem(field: str, code: str, what: str, value: int, limits: IntRange) -> Problem | None:
    if limits.allows(value):
        return None
    return Problem(
        field,
        code,
        f"{what} {value} is outside {limits.low}-{limits.high}",
        f"use {limits.low} to {limits.high}",
    )


def blk_problems(p: BlkPlan, iothreads: tuple[str, ...] = ()) -> list[Problem]:
    """Every rule a block device plan breaks (empty: the engine can build it)."""
    found = [
        queue_size_problem(p.queue_size, BLK_QUEUE_SIZE),
        serial_problem(p.serial),
        aio_problem(p.aio, p.direct),
        iops_problem(p.iops),
        range_problem("num_queues", "drive-queues", "queues", p.num_queues, BLK_QUEUES),
        iothread_problem(p.iothread, iothreads),
    ]
    return [f for f in found if f is not None]


def net_problems(p: NetPlan, iothreads: tuple[str, ...] = ()) -> list[Problem]:
    """Every rule a NIC plan breaks (empty: the engine can build it)."""
    found = [
        queue_size_problem(p.queue_size, NET_QUEUE_SIZE),
        mac_problem(p.mac),
        ifname_problem(p.ifname),
        range_problem("queue_pairs", "net-queues", "queues", p.queue_pairs, NET_QUEUE_PAIRS),
        iothread_problem(p.iothread, iothreads),
    ]
    return [f for f in found if f is not None]


def iothread_problem(iothread: str | None, iothreads: tuple[str, ...]) -> Problem | None:
    if iothread is None or iothread in iothreads:
        return None
    known = ", ".join(iothreads) or "none"
    return Problem(
        "iothread",
        "iothread-unknown",
        f"iothread {iothread!r} is not declared (declared: {known})",
        "name one of the VM's iothreads",
    )

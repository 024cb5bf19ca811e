"""Throughput of the virtio-blk device model itself, driven by the Python test driver.

No KVM and no guest: the driver posts requests into real guest memory, kicks, and reaps the
used ring, so the numbers are the cost of the queue walk + preadv + used-ring update in Python
(the upper bound the engine can reach; later rig numbers read against it). The disk file is
read once first so the page cache serves it (the device, not the disk, is measured), unless
``--direct``. Prints MB/s for sequential 1 MiB reads, IOPS for 4 KiB random reads, and the
interrupts per request with and without VIRTIO_F_RING_EVENT_IDX, for requests in two shapes:

- ``linux``: as Linux's virtio-blk driver posts them with VIRTIO_F_INDIRECT_DESC, one indirect
  table per request (header, the data as scattered 4 KiB pages, status): the per-buffer cost;
- ``flat``: header, one contiguous data buffer, status, as three ring descriptors.

``--aio`` picks the back ends (engine/io: off, native, io_uring; native needs ``--direct``). The
device runs without an event loop here, so an asynchronous back end's batch is waited for in
place: the figures are the device model's CPU cost per request, not the kernel's latency.

    .venv/bin/python bench/virtio_blk.py [--size-mib 256] [--seconds 3] [--direct]
                                         [--aio off,native,io_uring]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent),
    str(Path(__file__).resolve().parent.parent / "tests" / "support"),
]

from virtio_driver import DESC, Allocator, Driver  # noqa: E402

from engine.machine.memory import GuestMemory  # noqa: E402
from engine.virtio.blk import Blk  # noqa: E402
from engine.virtio.blk_spec import VIRTIO_BLK_T_IN  # noqa: E402
from engine.virtio.device import VIRTIO_F_RING_EVENT_IDX  # noqa: E402
from engine.virtio.mmio import MmioTransport  # noqa: E402

MiB = 1 << 20
HDR = struct.Struct("<IIQ")


def run(
    path: str,
    *,
    block: int,
    depth: int,
    seconds: float,
    rand: bool,
    direct: bool,
    event_idx: bool,
    linux: bool,
    aio: str = "off",
) -> dict:
    mem = GuestMemory.anonymous([(0, 512 * MiB)])
    dev = Blk("bench", path, direct=direct, aio=aio, queue_size=256)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 512 * MiB))
    drv.start(drop=0 if event_idx else 1 << VIRTIO_F_RING_EVENT_IDX)
    q = drv.queues[0]
    sectors = dev.capacity - block // 512
    rng = random.Random(1)
    # Pre-build `depth` request slots (header + data + status) and reuse them.
    slots = []
    for _ in range(depth):
        hdr = drv.alloc.alloc(16)
        data = drv.alloc.alloc(2 * block, 4096)
        status = drv.alloc.alloc(1)
        pages = block // 4096
        # Linux's pages are scattered: every other page of the area, in reverse order.
        bufs = [(hdr, 16, 1)] + [(data + 8192 * (pages - 1 - k), 4096, 3) for k in range(pages)]
        bufs.append((status, 1, 2))
        table = drv.alloc.alloc(16 * len(bufs))
        for k, (addr, n, flags) in enumerate(bufs):
            mem.write(table + 16 * k, DESC.pack(addr, n, flags, k + 1 if flags & 1 else 0))
        slots.append((hdr, data, status, table, 16 * len(bufs)))

    def post(i: int, sector: int) -> None:
        hdr, data, status, table, table_len = slots[i]
        mem.write(hdr, HDR.pack(VIRTIO_BLK_T_IN, 0, sector))
        if linux:
            mem.write(q.desc + 16 * i, DESC.pack(table, table_len, 4, 0))
            q.publish(i)
            return
        d = 3 * i
        mem.write(q.desc + 16 * d, DESC.pack(hdr, 16, 1, d + 1))
        mem.write(q.desc + 16 * (d + 1), DESC.pack(data, block, 3, d + 2))
        mem.write(q.desc + 16 * (d + 2), DESC.pack(status, 1, 2, 0))
        q.publish(d)

    pos = 0
    done = 0
    irq0 = drv.interrupts
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for i in range(depth):
            sector = rng.randrange(0, sectors) & ~7 if rand else pos
            pos = (pos + block // 512) % sectors
            post(i, sector)
        t.notify(0)
        while q.last_used != q.used_idx():
            q.last_used = (q.last_used + 1) & 0xFFFF
            done += 1
        q.set_used_event(q.last_used)
    elapsed = time.perf_counter() - t0
    irqs = drv.interrupts - irq0
    t.close()
    mem.close()
    return {"requests": done, "seconds": elapsed, "irq_per_req": irqs / max(1, done)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--direct", action="store_true", help="open the disk O_DIRECT (real disk I/O)")
    ap.add_argument("--file", help="disk image to read (default: a temporary file)")
    ap.add_argument("--aio", default="off,native,io_uring", help="back ends, comma-separated")
    ap.add_argument("--quick", action="store_true", help="linux-shaped requests, EVENT_IDX only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    made = False
    path = args.file
    if path is None:
        with tempfile.NamedTemporaryFile(dir="/var/tmp", delete=False) as tmp:
            chunk = os.urandom(MiB)
            for _ in range(args.size_mib):
                tmp.write(chunk)
        path, made = tmp.name, True
    if not args.direct:
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass
    try:
        print(
            f"virtio-blk device model, file {path} ({os.path.getsize(path) // MiB} MiB), direct={args.direct}"
        )
        shapes = ((True, True),) if args.quick else ((True, True), (True, False), (False, True))
        for aio in args.aio.split(","):
            if aio == "native" and not args.direct:
                print(f"  aio={aio}: skipped (Linux AIO needs --direct)")
                continue
            for linux, event_idx in shapes:
                shape = "linux" if linux else "flat "
                common = {"direct": args.direct, "event_idx": event_idx, "linux": linux, "aio": aio}
                r = run(path, block=MiB, depth=8, seconds=args.seconds, rand=False, **common)
                mbps = r["requests"] * MiB / r["seconds"] / 1e6
                print(
                    f"  aio={aio:8s} {shape} seq read 1 MiB  qd 8  event_idx={event_idx!s:5}: "
                    f"{mbps:8.0f} MB/s  ({r['requests'] / r['seconds']:7.0f} req/s, "
                    f"{r['irq_per_req']:.3f} irq/req)"
                )
                for depth in (1, 32):
                    r = run(
                        path, block=4096, depth=depth, seconds=args.seconds, rand=True, **common
                    )
                    print(
                        f"  aio={aio:8s} {shape} rand read 4 KiB qd {depth:<2d} event_idx="
                        f"{event_idx!s:5}: {r['requests'] / r['seconds']:8.0f} IOPS  "
                        f"({r['seconds'] * 1e6 / max(1, r['requests']):6.1f} us/req, "
                        f"{r['irq_per_req']:.3f} irq/req)"
                    )
    finally:
        if made:
            os.unlink(path)


if __name__ == "__main__":
    main()

"""CPU cost per frame of virtio-net's Python tap path: the device model itself, on a real tap.

No KVM and no guest: the Python test driver posts chains shaped as Linux's virtio-net posts
them (with VIRTIO_F_INDIRECT_DESC and GUEST_TSO, no MRG_RXBUF) into real guest memory and kicks;
the tap lives in a network namespace of the benchmark's own (link-local addresses). Measured
on the device's thread (CPU time, so other load on the host does not count):

- ``tx 64K``: a 64 KiB TSO frame per chain (vnet header, 66-byte linear part, 16 frags),
  addressed to a MAC nobody has (the kernel drops it right after the tap): queue walk, one
  writev, used ring;
- ``tx 1514``/``tx ack``: a full-size frame in two buffers, a 66-byte frame in one;
- ``rx``: frames the namespace's kernel queued on the tap (1 KB UDP datagrams), one 64 KiB
  "big packet" chain each (17 buffers): queue walk, one readv, used ring.

Each batch is one kick (TX) or one wake-up (RX) of ``--batch`` chains and ends with one
interrupt. Needs root (a namespace and a tap).

    .venv/bin/python bench/virtio_net.py [--batch 128] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent),
    str(Path(__file__).resolve().parent.parent / "tests" / "support"),
]

from nettest import address_tap, close_in, drain, netns, open_in, socket_in  # noqa: E402
from virtio_driver import DESC, Allocator, Driver  # noqa: E402

from engine.machine.memory import GuestMemory  # noqa: E402
from engine.virtio.chain import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT  # noqa: E402
from engine.virtio.mmio import MmioTransport  # noqa: E402
from engine.virtio.net import Net  # noqa: E402

MiB = 1 << 20
PAGE = 4096
GUEST_MAC = "52:54:00:aa:bb:d0"


def post_indirect(q, bufs: list[tuple[int, int, int]], table: int) -> None:
    """One chain as an indirect table at ``table`` (reused: Linux's tables move, the cost of a
    table does not depend on where it is)."""
    mem = q.mem
    for i, (addr, n, flags) in enumerate(bufs):
        more = i + 1 < len(bufs)
        mem.write(
            table + 16 * i,
            DESC.pack(addr, n, flags | (VIRTQ_DESC_F_NEXT if more else 0), i + 1 if more else 0),
        )
    head = q.free.pop(0)
    q.put_raw(head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
    q.inflight[head] = ([head], [])
    q.publish(head)


def measure(dev: Net, post, kick, reap, batch: int, rounds: int) -> list[float]:
    """CPU µs per chain of ``rounds`` batches (post outside the measurement)."""
    out = []
    for _ in range(rounds):
        post()
        t = time.thread_time()
        kick()
        out.append((time.thread_time() - t) * 1e6 / batch)
        reap()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root: it makes a network namespace and a tap")
    batch = min(a.batch, 200)
    with netns(f"svbn{os.getpid()}") as ns:
        name = f"svbn{os.getpid()}"[:15]
        tap = open_in(ns, name)
        address_tap(
            ns, name, "169.254.80.1", "169.254.80.2", bytes.fromhex(GUEST_MAC.replace(":", ""))
        )
        drain(tap)
        mem = GuestMemory.anonymous([(0, 256 * MiB)])
        dev = Net("bench", tap, mac=GUEST_MAC)
        t = MmioTransport(dev, mem)
        drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
        drv.start()
        rxq, txq = drv.queues[0], drv.queues[1]
        data = 16 * MiB  # frames and buffers live from here on
        mem.fill(data, 64 * MiB, 0)
        frame_hdr = bytes.fromhex("0200000000aa" + GUEST_MAC.replace(":", "")) + b"\x08\x00"
        mem.write(data + 12, frame_hdr)
        tables = data - 2 * MiB
        results: dict[str, list[float]] = {}

        def tx(shape: str) -> list[float]:
            def post() -> None:
                for i in range(batch):
                    base = data + i * 80 * 1024
                    if shape == "64K":
                        bufs = [(data, 12, 0), (data + 12, 66, 0)]
                        bufs += [(base + k * PAGE, PAGE, 0) for k in range(15)]
                        bufs.append((base + 15 * PAGE, 65536 - 66 - 15 * PAGE, 0))
                    elif shape == "1514":
                        bufs = [(data, 12, 0), (data + 12, 1514, 0)]
                    else:
                        bufs = [(data, 12 + 66, 0)]
                    post_indirect(txq, bufs, tables + 512 * i)

            return measure(dev, post, txq.kick, txq.collect, batch, a.rounds)

        for shape in ("64K", "1514", "ack"):
            results[f"tx {shape}"] = tx(shape)

        src = socket_in(ns, socket.SOCK_DGRAM)

        def post_rx() -> None:
            for i in range(batch):
                base = data + i * 80 * 1024
                bufs = [(base, 12, 2), (base + 12, PAGE - 12, 2)]
                bufs += [(base + k * PAGE, PAGE, 2) for k in range(1, 17)]
                post_indirect(rxq, bufs, tables + 512 * i)
            for _ in range(batch):
                src.sendto(b"r" * 1024, ("169.254.80.2", 9))
            time.sleep(0.01)

        results["rx"] = measure(dev, post_rx, rxq.kick, rxq.collect, batch, a.rounds)
        src.close()
        print(
            f"virtio_net: the Python tap path's device CPU per chain, µs (batches of {batch}, "
            f"{a.rounds} rounds; min / median); tx_dropped={dev.tx_dropped} "
            f"rx_dropped={dev.rx_dropped} interrupts={dev.stats.interrupts}"
        )
        for k, v in results.items():
            print(f"  {k:10s} {min(v):7.1f} {statistics.median(v):7.1f}")
        close_in(ns, t)
        mem.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

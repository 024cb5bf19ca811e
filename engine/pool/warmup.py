"""A throw-away VM that each spare engine builds (and never runs) before its request comes.

The first VM a freshly forked process builds is several times slower than the next: every
object the build touches has its page copied from the pool (reference counts are writes), and
the kernel sets up KVM for the new address space. The second build in the same process takes a
few milliseconds. So the spare builds one tiny VM (one vCPU, 64 MiB, a guest that is one
``hlt``, no devices, no QMP) while it waits, closes it, and only then is ready: the copying
and the first-time work happen off the request's path, and the pages it copied are ones the
real VM would have copied anyway (docs/pool.md gives the numbers).

Nothing of the warm-up VM survives it: its descriptors are closed, its threads joined (the
spare of a sandboxed VM forks the jailed engine later, which must not happen with a second
thread alive), its guest memory unmapped.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.plan import Plan

MEMORY = 64 << 20
LOAD_ADDR = 0x100000
HLT = b"\xf4\xeb\xfd"  # hlt ; jmp -3


def _elf(code: bytes) -> bytes:
    """A one-segment ELF64 executable of ``code`` at 1 MiB (what the loader takes for a kernel)."""
    ehdr, phdr = 64, 56
    head = (
        b"\x7fELF\x02\x01\x01\x00"
        + bytes(8)
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, LOAD_ADDR, ehdr, 0, 0, ehdr, phdr, 1, 64, 0, 0)
    )
    seg = struct.pack("<IIQQQQQQ", 1, 5, ehdr + phdr, LOAD_ADDR, LOAD_ADDR, len(code), len(code), 0x1000)  # fmt: skip
    return head + seg + code


def _plan(kernel: str) -> Plan:
    from engine.machine.layout import MMIO32_SIZE, MMIO32_START, ram_ranges
    from engine.plan import BootPlan, MemoryPlan, Plan, RamRange, TopologyPlan, VcpuPlan

    return Plan(
        name="warmup",
        arch="x86_64",
        machine="microvm",
        topology=TopologyPlan(1, 1, 1, 1, 1, 1, 1),
        vcpus=(VcpuPlan(0, 0, 0, 0, 0, 0, 0),),
        memory=MemoryPlan(
            size=MEMORY,
            ranges=tuple(RamRange(a, s) for a, s in ram_ranges(MEMORY)),
            mmio_hole=(MMIO32_START, MMIO32_SIZE),
        ),
        boot=BootPlan(kernel=kernel, cmdline="console=ttyS0"),
        seccomp=False,
    )


def warm_up() -> bool:
    """Build and close the throw-away VM; False if it failed (the real VM then simply starts
    cold). Raises only if a thread of it would not stop: the caller must not fork then."""
    from engine.vm import Vm

    ok = False
    fd = os.memfd_create("svlaunch-warmup-guest", os.MFD_CLOEXEC)
    try:
        os.write(fd, _elf(HLT))
        vm = Vm(_plan(f"/proc/self/fd/{fd}"))
        try:
            vm.start(paused=True)
            ok = True
        finally:
            vm.close()
    except Exception:
        ok = False
    finally:
        os.close(fd)
    for t in threading.enumerate():
        if t is not threading.main_thread():
            t.join(5.0)
    if threading.active_count() != 1:
        raise RuntimeError("a thread of the warm-up VM did not stop")
    return ok

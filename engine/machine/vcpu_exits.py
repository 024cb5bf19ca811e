"""What a vCPU does with one VM exit: ``handle_exit`` (a free function over ``(exit reason,
kvm_run view, context)``, so it is tested with synthetic exits and no KVM), the PIO and MMIO
exits read straight from the shared ``kvm_run`` page, the context they run in, and the exit
profile (``SVLAUNCH_EXIT_STATS=1``).

Split from ``vcpu.py``, which keeps the thread (run loop, pause, kick, stop): this is what one
exit costs and where a guest-controlled value meets a device. ``vcpu.py`` imports ``io_exit``
and ``mmio_exit`` by name, so its loop calls them as module globals, as before the split.
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine.machine import kvm_sys as k

if TYPE_CHECKING:
    from typing import Any

    from engine.machine.coalesced import CoalescedRing


class IoBus(Protocol):
    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...


class VmEvents(Protocol):
    """What a vCPU reports to its VM (implemented by ``engine.vm.Vm``)."""

    def on_poweroff(self, source: str) -> None: ...

    def on_reset(self, source: str) -> None: ...

    def on_triple_fault(self, source: str) -> None: ...

    def on_guest_panic(self, crash_loaded: bool) -> None: ...

    def on_fatal(self, message: str) -> None: ...


class ExitAction(enum.Enum):
    CONTINUE = "continue"  # re-enter the guest
    STOP = "stop"  # this vCPU stops (the VM was told why)


@dataclass(slots=True)
class ExitProfile:
    """Where one vCPU's time and exits went (``SVLAUNCH_EXIT_STATS=1``; off the default path).

    ``by_key`` counts exits by (reason, port or MMIO address); ``vmm_s`` is the time between
    a KVM_RUN returning and the next one starting (the Python exit path), ``guest_s`` the time
    inside KVM_RUN. The engine prints the profiles at exit: the boot-time benchmark's tool for
    finding which device's exits to make cheaper or remove.
    """

    by_key: Counter[tuple[str, int]] = field(default_factory=Counter)
    vmm_s: dict[tuple[str, int], float] = field(default_factory=dict)
    guest_s: float = 0.0

    def lines(self, index: int, top: int = 12) -> list[str]:
        total = sum(self.by_key.values())
        spent = sum(self.vmm_s.values())
        out = [
            f"vcpu {index}: {total} exits, {self.guest_s:.3f} s in KVM_RUN, "
            f"{spent:.3f} s handling exits"
        ]
        for (reason, addr), n in self.by_key.most_common(top):
            t = self.vmm_s.get((reason, addr), 0.0)
            out.append(f"  {reason:<14} {addr:#10x} {n:8d}  {t * 1e6 / max(n, 1):8.1f} us each")
        return out


def profiling_requested() -> bool:
    import os

    return os.environ.get("SVLAUNCH_EXIT_STATS", "") not in ("", "0")


@dataclass(slots=True)
class ExitContext:
    pio: IoBus
    mmio: IoBus
    events: VmEvents
    pvm: bool = False
    get_rip: Callable[[], int] = lambda: 0
    #: exits by reason number (``counts`` names them): a list index per exit, not a dict update
    exits: list[int] = field(default_factory=lambda: [0] * 256)
    profile: ExitProfile | None = None
    #: KVM's coalesced PIO ring, applied before any PIO exit is handled (engine.machine.coalesced)
    ring: CoalescedRing | None = None
    #: port -> a device's lock-free answer to a one-byte read, or -1 when it needs the bus's
    #: locked path (the UART's LSR while THRE is set and nothing was received: docs/console.md)
    fast_reads: dict[int, Callable[[], int]] = field(default_factory=dict)

    @property
    def counts(self) -> Counter[str]:
        """Exits so far by reason name."""
        return Counter({k.EXIT_NAMES.get(r, str(r)): n for r, n in enumerate(self.exits) if n})


#: kvm_run's exit union starts at byte 32: ``kvm_exit_io`` and ``kvm_exit_mmio`` read in one call
#: each, from the shared page (cheaper than cffi attribute access, which builds objects).
_RUN_UNION = 32
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_MMIO_DATA = _RUN_UNION + 8
_IO_OUT = k.KVM_EXIT_IO_OUT


def io_exit(run_map: Any, ctx: ExitContext) -> None:
    direction, size, port, count, off = _IO.unpack_from(run_map, _RUN_UNION)
    ring = ctx.ring
    if ring is not None:
        heads = ring.heads
        if heads[0] != heads[1]:
            ring.before_exit(port, direction != _IO_OUT)  # queued writes come first
    if count == 1 and size == 1 and off < len(run_map):  # one byte: the UART's hot path
        if direction == _IO_OUT:
            ctx.pio.write(port, 1, run_map[off])
            return
        fast = ctx.fast_reads.get(port)
        value = -1 if fast is None else fast()
        if value < 0:
            value = ctx.pio.read(port, 1)
        run_map[off] = value & 0xFF
        return
    if size not in (1, 2, 4) or count > 4096 or off + size * count > len(run_map):
        return  # malformed exit from KVM: ignore rather than index outside the page
    if direction == k.KVM_EXIT_IO_OUT:
        if count == 1:
            ctx.pio.write(port, size, int.from_bytes(run_map[off : off + size], "little"))
            return
        for i in range(count):
            p = off + i * size
            ctx.pio.write(port, size, int.from_bytes(run_map[p : p + size], "little"))
    else:
        mask = (1 << (8 * size)) - 1
        for i in range(count):
            p = off + i * size
            run_map[p : p + size] = (ctx.pio.read(port, size) & mask).to_bytes(size, "little")


def mmio_exit(run_map: Any, ctx: ExitContext) -> None:
    addr, data, length, is_write = _MMIO.unpack_from(run_map, _RUN_UNION)
    if length not in (1, 2, 4, 8):
        return
    if is_write:
        ctx.mmio.write(addr, length, int.from_bytes(data[:length], "little"))
    else:
        value = ctx.mmio.read(addr, length) & ((1 << (8 * length)) - 1)
        run_map[_MMIO_DATA : _MMIO_DATA + length] = value.to_bytes(length, "little")


def describe_internal_error(run: Any, rip: int, *, pvm: bool) -> str:
    """One line naming RIP and the failing instruction's bytes (how PVM's limits show up)."""
    ie = run.internal
    if ie.suberror == k.KVM_INTERNAL_ERROR_EMULATION:
        ef = run.emulation_failure
        text = f"emulation failure at RIP {rip:#x}"
        if ef.flags & k.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES and ef.insn_size:
            n = min(ef.insn_size, 15)
            text += ": instruction bytes " + " ".join(f"{ef.insn_bytes[i]:02x}" for i in range(n))
        if pvm:
            text += (
                " (this PVM host emulates guest kernel code and cannot run some instructions: "
                "boot stock kernels in the nested rig, scripts/rig)"
            )
        return text
    data = " ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
    return f"KVM internal error, suberror {ie.suberror} at RIP {rip:#x} data [{data}]"


def handle_exit(reason: int, run: Any, run_map: Any, ctx: ExitContext) -> ExitAction:
    """Dispatch one VM exit. Guest-controlled values are bounded; bus devices see offsets."""
    ctx.exits[reason & 0xFF] += 1
    if reason == k.KVM_EXIT_IO:
        io_exit(run_map, ctx)
        return ExitAction.CONTINUE
    if reason == k.KVM_EXIT_MMIO:
        mmio_exit(run_map, ctx)
        return ExitAction.CONTINUE
    if reason in (k.KVM_EXIT_INTR, k.KVM_EXIT_IRQ_WINDOW_OPEN):
        return ExitAction.CONTINUE
    if reason == k.KVM_EXIT_HLT:
        # With the in-kernel irqchip HLT waits inside KVM; an HLT exit means a halted CPU.
        return ExitAction.STOP
    if reason == k.KVM_EXIT_SHUTDOWN:  # x86: a triple fault (or an INIT the guest cannot take)
        ctx.events.on_triple_fault(f"triple fault at RIP {ctx.get_rip():#x}")
        return ExitAction.STOP
    if reason == k.KVM_EXIT_SYSTEM_EVENT:
        t = run.system_event.type
        if t == k.KVM_SYSTEM_EVENT_SHUTDOWN:
            ctx.events.on_poweroff("system event: shutdown")
        elif t == k.KVM_SYSTEM_EVENT_RESET:
            ctx.events.on_reset("system event: reset")
        elif t == k.KVM_SYSTEM_EVENT_CRASH:  # the guest said so (Hyper-V crash MSRs), as pvpanic
            ctx.events.on_guest_panic(False)
            return ExitAction.CONTINUE  # the panic action decides (QEMU: the same path)
        else:
            ctx.events.on_fatal(f"unknown KVM system event {t}")
        return ExitAction.STOP
    if reason == k.KVM_EXIT_INTERNAL_ERROR:
        ctx.events.on_fatal(describe_internal_error(run, ctx.get_rip(), pvm=ctx.pvm))
        return ExitAction.STOP
    if reason == k.KVM_EXIT_FAIL_ENTRY:
        fe = run.fail_entry
        ctx.events.on_fatal(
            f"VM entry failed: hardware reason {fe.hardware_entry_failure_reason:#x} on cpu {fe.cpu}"
        )
        return ExitAction.STOP
    ctx.events.on_fatal(
        f"unexpected exit {k.EXIT_NAMES.get(reason, reason)} at RIP {ctx.get_rip():#x}"
    )
    return ExitAction.STOP

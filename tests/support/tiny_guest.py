"""Tiny 64-bit guests of the tests' own, and plans that run them.

Each guest is a few bytes of long-mode code wrapped in a one-segment ELF loaded at 1 MiB. The
engine enters it the way it enters Linux (64-bit boot protocol), so a tiny guest exercises the
loader, the boot registers, the PIO bus, the UART and the ACPI PM port. Code is assembled by
hand; each helper names the instructions it emits.
"""

from __future__ import annotations

import struct
from pathlib import Path

from engine.machine import layout
from engine.machine.layout import MMIO32_SIZE, MMIO32_START, ram_ranges
from engine.plan import (
    BootPlan,
    ChardevPlan,
    HostBinding,
    MemoryPlan,
    Plan,
    RamRange,
    SerialPlan,
    TopologyPlan,
    VcpuPlan,
)
from launcher.compile.topology import cpu_positions
from launcher.model import Topology

LOAD_ADDR = 0x100000
COM1 = 0x3F8
PM_PORT = 0x600
POWEROFF = 0x34
RESET = 0x01


def mov_dx(port: int) -> bytes:
    return b"\x66\xba" + struct.pack("<H", port)  # mov dx, imm16


def out_al(value: int) -> bytes:
    return bytes((0xB0, value & 0xFF, 0xEE))  # mov al, imm8 ; out dx, al


def say(message: bytes) -> bytes:
    return mov_dx(COM1) + b"".join(out_al(b) for b in message)


def poweroff() -> bytes:
    return mov_dx(PM_PORT) + out_al(POWEROFF) + HANG


def reset() -> bytes:
    return mov_dx(PM_PORT) + out_al(RESET) + HANG


def pvpanic_event(event: int) -> bytes:
    """``mov dx, PVPANIC_PORT; mov al, event; out dx, al``: what Linux's pvpanic driver does in
    its panic notifier (1: PVPANIC_PANICKED, 2: PVPANIC_CRASH_LOADED)."""
    return mov_dx(layout.PVPANIC_PORT) + out_al(event)


#: ``in al, dx`` at the pvpanic port, then print ``'0' + al`` (the events the host handles)
SAY_PVPANIC_EVENTS = mov_dx(layout.PVPANIC_PORT) + b"\xec" + b"\x04\x30" + mov_dx(COM1) + b"\xee"
#: ``1: mov al, 'x'; out dx, al; jmp 1b`` with dx = COM1: a guest that never stops on its own
SPIN_SAY_X = mov_dx(COM1) + b"\xb0x\xee\xeb\xfb"


HANG = b"\xf4\xeb\xfd"  # hlt ; jmp -3
UD2 = b"\x0f\x0b"  # #UD with an empty IDT: #DF, then a triple fault
LOCK_CMPXCHG16B_RSI = b"\xf0\x48\x0f\xc7\x0e"  # lock cmpxchg16b [rsi] (PVM cannot emulate it)
#: print CPUID.1:EBX[31:24] (initial APIC id) as one character '0'+id
SAY_APIC_ID = (
    b"\xb8\x01\x00\x00\x00"  # mov eax, 1
    b"\x0f\xa2"  # cpuid
    b"\xc1\xeb\x18"  # shr ebx, 24
    b"\x88\xd8"  # mov al, bl
    b"\x04\x30" + mov_dx(COM1) + b"\xee"  # add al, '0'  # out dx, al
)


def hello_poweroff(message: bytes = b"hello from the tiny guest\n") -> bytes:
    return say(message) + poweroff()


def elf_image(code: bytes, *, entry: int = LOAD_ADDR, bss: int = 0) -> bytes:
    """A minimal ELF64 executable with one PT_LOAD of ``code`` at physical ``entry``."""
    ehdr_size, phdr_size = 64, 56
    offset = ehdr_size + phdr_size
    ehdr = (
        b"\x7fELF\x02\x01\x01\x00"
        + b"\x00" * 8
        + struct.pack(
            "<HHIQQQIHHHHHH", 2, 62, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 64, 0, 0
        )
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, offset, entry, entry, len(code), len(code) + bss, 0x1000)
    return ehdr + phdr + code


def write_guest(tmp: Path, code: bytes, name: str = "guest.elf") -> Path:
    p = tmp / name
    p.write_bytes(elf_image(code))
    return p


def make_plan(
    kernel: Path | str,
    *,
    cpus: int = 1,
    sockets: int | None = None,
    memory: int = 64 << 20,
    serial_file: Path | str | None = None,
    serial_backend: str = "file",
    node_sizes: list[int] | None = None,
    host_nodes: tuple[int, ...] = (0,),
    policy: str = "bind",
    mem_path: str | None = None,
    shared: bool = False,
    prealloc: bool = False,
    dump_guest_core: bool = True,
    cmdline: str = "console=ttyS0",
    initrd: str | None = None,
) -> Plan:
    """A plan for a tiny guest: ``cpus`` vCPUs (``sockets`` packages), RAM, COM1 to a file."""
    sockets = sockets or 1
    topo = Topology(cpus, cpus, sockets, 1, 1, cpus // sockets, 1)
    vcpus = tuple(
        VcpuPlan(p.index, p.apic_id, p.package, p.die, p.cluster, p.core, p.thread)
        for p in cpu_positions(topo)
    )
    ranges: list[RamRange] = []
    bindings: list[HostBinding] = []
    if node_sizes:
        from engine.machine.layout import guest_ranges

        start = 0
        for node, size in enumerate(node_sizes):
            for addr, n in guest_ranges(start, size):
                ranges.append(RamRange(addr, n, node))
                bindings.append(HostBinding(addr, n, host_nodes, policy))
            start += size
        memory = sum(node_sizes)
    else:
        ranges = [RamRange(a, s) for a, s in ram_ranges(memory)]
    serial = None
    if serial_file is not None or serial_backend != "file":
        serial = SerialPlan(
            ChardevPlan(
                "serial0",
                serial_backend,
                str(serial_file) if serial_file else None,
                server=serial_backend == "socket",
                nowait=True,
            )
        )
    return Plan(
        name="tiny",
        arch="x86_64",
        machine="microvm",
        topology=TopologyPlan(sockets, 1, 1, cpus // sockets, 1, cpus, cpus),
        vcpus=vcpus,
        memory=MemoryPlan(
            size=memory,
            ranges=tuple(ranges),
            mmio_hole=(MMIO32_START, MMIO32_SIZE),
            mem_path=mem_path,
            prealloc=prealloc,
            shared=shared,
            dump_guest_core=dump_guest_core,
            bindings=tuple(bindings),
        ),
        boot=BootPlan(kernel=str(kernel), initrd=initrd, cmdline=cmdline),
        serial=serial,
        seccomp=False,
    )


def wait_for_power_button() -> bytes:
    """``mov dx, layout.GED_PORT; 1: in al, dx; test al, 1; jz 1b``: poll the event byte until bit 0."""
    loop = b"\xec" + b"\xa8\x01"  # in al, dx ; test al, 1
    return mov_dx(layout.GED_PORT) + loop + b"\x74" + struct.pack("<b", -(len(loop) + 2))  # jz loop


def uart_flood(count: int, table: bytes = bytes(range(256))) -> bytes:
    """Write ``count`` bytes of ``table`` over and over to COM1 as fast as the UART takes them,
    polling LSR.THRE before each (a polling 8250 driver), then power off.

    ``lea rsi, [table]; mov dx, LSR; mov ecx, count; xor ebx, ebx;
    1: in al, dx; test al, 0x20; jz 1b; mov al, [rsi+rbx]; mov dx, THR; out dx, al;
    mov dx, LSR; inc ebx; cmp ebx, len; jne 2f; xor ebx, ebx; 2: dec ecx; jnz 1b``; the
    table follows the code.
    """
    lsr = COM1 + 5
    loop = (
        b"\xec"  # in al, dx
        b"\xa8\x20"  # test al, 0x20 (THRE)
        b"\x74\xfb"  # jz -5: poll again
        b"\x8a\x04\x1e"  # mov al, [rsi+rbx]
        + mov_dx(COM1)
        + b"\xee"  # out dx, al
        + mov_dx(lsr)
        + b"\xff\xc3"  # inc ebx
        + b"\x81\xfb"
        + struct.pack("<I", len(table))  # cmp ebx, len
        + b"\x75\x02"  # jne +2
        b"\x31\xdb"  # xor ebx, ebx
        b"\xff\xc9"  # dec ecx
    )
    body = (
        mov_dx(lsr)
        + b"\xb9"
        + struct.pack("<I", count)  # mov ecx, count
        + b"\x31\xdb"  # xor ebx, ebx
        + loop
        + b"\x75"
        + struct.pack("<b", -(len(loop) + 2))  # jnz loop
        + poweroff()
    )
    lea = b"\x48\x8d\x35" + struct.pack("<i", len(body))  # lea rsi, [rip + len(body)]
    return lea + body + table


def flood_pattern(count: int, table: bytes = bytes(range(256))) -> bytes:
    """What ``uart_flood(count, table)`` writes."""
    return table * (count // len(table)) + table[: count % len(table)]

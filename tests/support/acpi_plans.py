"""Plans and ``iasl`` helpers shared by the ACPI and CPUID tests, and checks of the plans themselves.

Plans are built directly from ``engine.plan`` values, with APIC ids from the real
``launcher.compile.topology`` formula, so ACPI and CPUID are checked against what the compiler
produces. ``iasl`` (Debian acpica-tools) disassembles each table; ``roundtrip`` compiles the
disassembly back and compares bytes, which catches any field iasl read differently from us.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.machine.layout import virtio_mmio_slot
from engine.plan import (
    BlkPlan,
    BootPlan,
    ChardevPlan,
    MemoryPlan,
    NetPlan,
    NumaNodePlan,
    NumaPlan,
    Plan,
    RamRange,
    RngPlan,
    SerialPlan,
    TopologyPlan,
    VcpuPlan,
)
from launcher.compile.topology import cpu_positions
from launcher.model import Topology

MiB = 1 << 20
IASL = shutil.which("iasl")
needs_iasl = pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) is not installed")

#: name -> (sockets, dies, clusters, cores, threads)
TOPOLOGIES: dict[str, tuple[int, int, int, int, int]] = {
    "1cpu": (1, 1, 1, 1, 1),
    "2s2c": (2, 1, 1, 2, 1),
    "8cpu-dies-threads": (1, 2, 1, 2, 2),
    "8cpu-clusters": (2, 1, 2, 1, 2),
    "12cpu-odd": (2, 1, 1, 3, 2),  # 3 cores: APIC ids have gaps
    "6cpu-odd": (2, 1, 1, 3, 1),
    "all-levels": (2, 2, 2, 2, 2),
    "x2apic": (3, 1, 1, 65, 1),  # ids above 254: x2APIC MADT/SRAT entries
}


def topology_plan(sockets: int, dies: int, clusters: int, cores: int, threads: int) -> TopologyPlan:
    n = sockets * dies * clusters * cores * threads
    return TopologyPlan(sockets, dies, clusters, cores, threads, n, n)


def vcpus_for(t: TopologyPlan, node_of: dict[int, int] | None = None) -> tuple[VcpuPlan, ...]:
    topo = Topology(t.cpus, t.maxcpus, t.sockets, t.dies, t.clusters, t.cores, t.threads)
    return tuple(
        VcpuPlan(
            p.index,
            p.apic_id,
            p.package,
            p.die,
            p.cluster,
            p.core,
            p.thread,
            (node_of or {}).get(p.index),
        )
        for p in cpu_positions(topo)
    )


def make_plan(
    name: str = "1cpu",
    *,
    devices: int = 0,
    numa: bool = False,
    serial: bool = True,
) -> Plan:
    """A plan with the named topology, ``devices`` virtio-mmio devices, optional 2-node NUMA."""
    t = topology_plan(*TOPOLOGIES[name])
    mem_size = 768 * MiB
    numa_plan = None
    node_of: dict[int, int] = {}
    if numa:
        half = t.cpus // 2 or 1
        node_of = {i: (0 if i < half else 1) for i in range(t.cpus)}
        numa_plan = NumaPlan(
            (
                NumaNodePlan(0, tuple(range(half)), 512 * MiB, ((0, 512 * MiB),)),
                NumaNodePlan(1, tuple(range(half, t.cpus)), 256 * MiB, ((512 * MiB, 256 * MiB),)),
            ),
            ((10, 21), (21, 10)),
        )
    kinds = (BlkPlan, NetPlan, RngPlan)
    devs = []
    for i in range(devices):
        base, irq = virtio_mmio_slot(i)
        devs.append(kinds[i % 3](f"dev{i}", base, irq))
    return Plan(
        name=name,
        arch="x86_64",
        machine="microvm",
        topology=t,
        vcpus=vcpus_for(t, node_of),
        memory=MemoryPlan(mem_size, (RamRange(0, mem_size),), (0xC000_0000, 1 << 30)),
        boot=BootPlan("/boot/vmlinux"),
        numa=numa_plan,
        serial=SerialPlan(ChardevPlan("con", "stdio")) if serial else None,
        devices=tuple(devs),
    )


# -- iasl ---------------------------------------------------------------------------------------

#: iasl output that means the table is wrong (everything else it prints is decoration).
BAD = re.compile(r"Incorrect checksum|\*\*\*\*|Error|Warning|Invalid|Unknown", re.IGNORECASE)


def disassemble(table: bytes, tmp_path: Path, stem: str | None = None) -> str:
    """``iasl -d`` one table; return the .dsl text after checking nothing was flagged."""
    stem = stem or table[:4].decode().lower()
    src = tmp_path / f"{stem}.dat"
    src.write_bytes(table)
    run = subprocess.run(
        [IASL or "iasl", "-d", src.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    dsl = tmp_path / f"{stem}.dsl"
    assert run.returncode == 0 and dsl.exists(), run.stdout + run.stderr
    text = dsl.read_text()
    # Data-table disassembly ends with a hex dump whose ASCII column may say anything.
    body = text.split("Raw Table Data")[0]
    flagged = [line for line in body.splitlines() if BAD.search(line)]
    assert not flagged, "\n".join(flagged)
    assert not BAD.search(run.stderr), run.stderr
    return body


def roundtrip(table: bytes, tmp_path: Path) -> bytes:
    """Disassemble, compile the ASL back with iasl (no optimisations), return the new bytes."""
    stem = table[:4].decode().lower()
    disassemble(table, tmp_path, stem)
    run = subprocess.run(
        [IASL or "iasl", "-oa", "-p", f"rt_{stem}", f"{stem}.dsl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 Errors, 0 Warnings" in run.stdout, run.stdout
    return (tmp_path / f"rt_{stem}.aml").read_bytes()


def same_but_creator(a: bytes, b: bytes) -> bool:
    """Equal apart from the checksum and creator id/revision iasl writes as its own."""

    def strip(d: bytes) -> bytes:
        return d[:9] + d[10:28] + d[36:]

    return strip(a) == strip(b)


def hexfield(text: str, label: str) -> list[int]:
    """Every value of the ``label : XX`` lines of a data-table disassembly, in order."""
    pat = re.compile(rf"^\[[0-9A-F]+h [0-9]+ +[0-9]+\] +{re.escape(label)} : ([0-9A-F]+)", re.M)
    return [int(v, 16) for v in pat.findall(text)]


# -- the plans themselves ---------------------------------------------------------------------

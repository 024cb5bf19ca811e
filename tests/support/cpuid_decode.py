"""CPUID decoders for the tests: decode the patched leaves back into topology the way Linux does, for AMD and Intel.

The AMD list is this project's real development host (an AMD EPYC under PVM), captured with
``KVM_GET_SUPPORTED_CPUID``; the Intel list is hand-written after a Sapphire Rapids host. The
decoders below follow Linux: leaf 0x1F/0xB level shifts (6.9+ ``topology_ext.c``, and 6.1's
``detect_extended_topology`` which ignores module levels), leaf 4/0x8000001D cache sharing
(``init_intel_cacheinfo``, ``cacheinfo_amd_init_llc_id``), AMD 0x80000008/0x8000001E.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from acpi_plans import vcpus_for

from engine.machine.acpi.builder import build_acpi
from engine.machine.cpuid import SIGNIFICANT_INDEX, CpuidEntry, patch_cpuid, vendor_of
from engine.plan import TopologyPlan, VcpuPlan
from launcher.compile.topology import apic_id_widths


def _entries(rows: list[tuple[int, ...]]) -> tuple[CpuidEntry, ...]:
    return tuple(CpuidEntry(*r) for r in rows)


# fmt: off
#: KVM_GET_SUPPORTED_CPUID on the development host (AMD EPYC, family 0x19, kvm_pvm loaded).
AMD_HOST = _entries([
    (0x0, 0, 0, 0x0000001c, 0x68747541, 0x444d4163, 0x69746e65),
    (0x1, 0, 0, 0x00a10f11, 0x01020800, 0x81202000, 0x078bfbff),
    (0x2, 0, 0, 0, 0, 0, 0), (0x3, 0, 0, 0, 0, 0, 0), (0x4, 0, 1, 0, 0, 0, 0),
    (0x5, 0, 0, 0, 0, 0, 0), (0x6, 0, 0, 0x00000004, 0, 0, 0),
    (0x7, 0, 1, 0x00000001, 0x01800002, 0x00000104, 0x20000000), (0x7, 1, 1, 0, 0, 0, 0),
    (0x8, 0, 0, 0, 0, 0, 0), (0x9, 0, 0, 0, 0, 0, 0), (0xa, 0, 0, 0, 0, 0, 0),
    (0xb, 0, 1, 0, 0, 0, 0x00000001), (0xc, 0, 0, 0, 0, 0, 0),
    (0xd, 0, 1, 0x000000e7, 0x00000980, 0x00000980, 0), (0xd, 1, 1, 0, 0, 0, 0),
    (0xd, 2, 1, 0x00000100, 0x00000240, 0, 0), (0xd, 5, 1, 0x00000040, 0x00000340, 0, 0),
    (0xd, 6, 1, 0x00000200, 0x00000380, 0, 0), (0xd, 7, 1, 0x00000400, 0x00000580, 0, 0),
    (0xe, 0, 0, 0, 0, 0, 0), (0xf, 0, 1, 0, 0, 0, 0), (0x10, 0, 1, 0, 0, 0, 0),
    (0x11, 0, 0, 0, 0, 0, 0), (0x12, 0, 1, 0, 0, 0, 0), (0x13, 0, 0, 0, 0, 0, 0),
    (0x14, 0, 1, 0, 0, 0, 0), (0x15, 0, 0, 0, 0, 0, 0), (0x16, 0, 0, 0, 0, 0, 0),
    (0x17, 0, 1, 0, 0, 0, 0), (0x18, 0, 1, 0, 0, 0, 0), (0x19, 0, 0, 0, 0, 0, 0),
    (0x1a, 0, 0, 0, 0, 0, 0), (0x1b, 0, 0, 0, 0, 0, 0), (0x1c, 0, 0, 0, 0, 0, 0),
    (0x80000000, 0, 0, 0x80000021, 0x68747541, 0x444d4163, 0x69746e65),
    (0x80000001, 0, 0, 0x00a10f11, 0x40000000, 0x00400393, 0x23d3fbff),
    (0x80000002, 0, 0, 0, 0, 0, 0), (0x80000003, 0, 0, 0, 0, 0, 0),
    (0x80000004, 0, 0, 0, 0, 0, 0),
    (0x80000005, 0, 0, 0xff48ff40, 0xff48ff40, 0x20080140, 0x20080140),
    (0x80000006, 0, 0, 0x5c002200, 0x6c004200, 0x04006140, 0x0a009140),
    (0x80000007, 0, 0, 0, 0, 0, 0x00000100),
    (0x80000008, 0, 0, 0x00003030, 0x50020005, 0x00007001, 0),
    *((f, 0, 0, 0, 0, 0, 0) for f in range(0x80000009, 0x8000001a)),
    (0x8000001a, 0, 0, 0x00000006, 0, 0, 0), (0x8000001b, 0, 0, 0, 0, 0, 0),
    (0x8000001c, 0, 0, 0, 0, 0, 0),
    (0x8000001d, 0, 1, 0x00000121, 0x01c0003f, 0x0000003f, 0),
    (0x8000001d, 1, 1, 0x00000122, 0x01c0003f, 0x0000003f, 0),
    (0x8000001d, 2, 1, 0x00000143, 0x01c0003f, 0x000007ff, 0x00000002),
    (0x8000001d, 3, 1, 0x00004163, 0x03c0003f, 0x00007fff, 0x00000001),
    (0x8000001d, 4, 1, 0, 0, 0, 0),
    (0x8000001e, 0, 0, 0, 0, 0, 0), (0x8000001f, 0, 0, 0, 0, 0, 0),
    (0x80000020, 0, 0, 0, 0, 0, 0), (0x80000021, 0, 0, 0x00000204, 0, 0x00000006, 0),
    (0x40000000, 0, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x0000004d),
    (0x40000001, 0, 0, 0x01007efb, 0, 0, 0),
])

#: Hand-written after a Sapphire Rapids host under KVM: AVX-512, XSAVE, CX16, RDTSCP, leaf 4
#: caches with the host's own sharing counts, host 0xB/0x1F levels to be replaced.
INTEL_HOST = _entries([
    (0x0, 0, 0, 0x0000001f, 0x756e6547, 0x6c65746e, 0x49656e69),
    (0x1, 0, 0, 0x000806f8, 0x00010800, 0xf7fa3223, 0x1f8bfbff),
    (0x2, 0, 0, 0x00feff01, 0x000000f0, 0, 0),
    (0x4, 0, 1, 0xfc004121, 0x02c0003f, 0x0000003f, 0),
    (0x4, 1, 1, 0xfc004122, 0x01c0003f, 0x0000003f, 0),
    (0x4, 2, 1, 0xfc01c143, 0x03c0003f, 0x000007ff, 0),
    (0x4, 3, 1, 0xfc1fc163, 0x0380003f, 0x0000ffff, 0x00000004),
    (0x4, 4, 1, 0, 0, 0, 0),
    (0x6, 0, 0, 0x00000004, 0, 0, 0),
    (0x7, 0, 1, 0x00000002, 0xf1bf07ab, 0x1b415f6e, 0xbc1c4410),
    (0x7, 1, 1, 0x00001c30, 0, 0, 0),
    (0xa, 0, 0, 0x07300802, 0, 0, 0x00000603),
    (0xb, 0, 1, 0x00000001, 0x00000002, 0x00000100, 0),
    (0xb, 1, 1, 0x00000007, 0x00000038, 0x00000201, 0),
    (0xd, 0, 1, 0x000602e7, 0x00002b00, 0x00002b00, 0),
    (0xd, 1, 1, 0x0000001f, 0x00000240, 0, 0),
    (0xd, 2, 1, 0x00000100, 0x00000240, 0, 0),
    (0x1f, 0, 1, 0x00000001, 0x00000002, 0x00000100, 0),
    (0x1f, 1, 1, 0x00000007, 0x00000038, 0x00000201, 0),
    (0x1f, 2, 1, 0, 0, 0x00000002, 0),
    (0x80000000, 0, 0, 0x80000008, 0, 0, 0),
    (0x80000001, 0, 0, 0, 0, 0x00000121, 0x2c100800),
    (0x80000006, 0, 0, 0, 0, 0x08007040, 0),
    (0x80000008, 0, 0, 0x0000302e, 0, 0, 0),
    (0x40000000, 0, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x0000004d),
    (0x40000001, 0, 0, 0x01007efb, 0, 0, 0),
])
# fmt: on

HOSTS = {"amd": AMD_HOST, "intel": INTEL_HOST}


# -- a Linux-like decoder ---------------------------------------------------------------------


class Cpu:
    """CPUID as the guest sees it: the entry list behind KVM's lookup rules."""

    def __init__(self, entries: list[CpuidEntry]) -> None:
        self.by_key = {(e.function, e.index): e for e in entries}
        assert len(self.by_key) == len(entries), "duplicate (function, index)"

    def __call__(self, function: int, index: int = 0) -> CpuidEntry:
        e = self.by_key.get((function, index))
        first = self.by_key.get((function, 0))
        if e is None and first is not None and not first.flags & SIGNIFICANT_INDEX:
            e = first
        return e or CpuidEntry(function, index)


@dataclass(frozen=True)
class Decoded:
    apic_id: int
    package: int
    die: int  # Linux 6.9+: die within package
    module: int
    core: int
    thread: int
    threads_per_core: int
    linux61_package: int  # Linux 6.1 detect_extended_topology's phys_proc_id
    linux61_core: tuple[int, int, int]  # 6.1's (phys_proc_id, cpu_die_id, cpu_core_id)


def _levels(cpu: Cpu, leaf: int) -> list[tuple[int, int, int, int]]:
    """(type, shift, count, x2apic id) per subleaf, until type 0 (Linux parse_topology_leaf)."""
    out = []
    for sub in range(8):
        e = cpu(leaf, sub)
        kind = (e.ecx >> 8) & 0xFF
        if e.ebx & 0xFFFF == 0 or kind == 0:
            break
        assert e.ecx & 0xFF == sub
        out.append((kind, e.eax & 0x1F, e.ebx & 0xFFFF, e.edx))
    return out


def decode_ext_topology(cpu: Cpu) -> Decoded:
    use_1f = cpu(0).eax >= 0x1F and cpu(0x1F).ebx != 0
    levels = _levels(cpu, 0x1F if use_1f else 0xB)
    assert levels and levels[0][0] == 1, "first level must be SMT"
    apic = levels[0][3]
    assert all(lv[3] == apic for lv in levels)
    # Linux 6.9+: shift per domain, propagated upwards (SMT 1, CORE 2, MODULE 3, DIE 5).
    shift = {}
    for kind, s, _n, _ in levels:
        shift[kind] = s
    order = [1, 2, 3, 5]
    last = 0
    for k in order:
        last = shift.setdefault(k, last)
    pkg_shift = levels[-1][1]

    def field(lo: int, hi: int) -> int:
        return (apic >> lo) & ((1 << (hi - lo)) - 1)

    # Linux 6.1: only CORE and DIE levels count; the package shift is DIE's, else CORE's.
    core61 = die61 = 0
    for kind, s, _n, _ in levels:
        if kind == 2:
            core61 = die61 = s
        if kind == 5:
            die61 = s
    return Decoded(
        apic_id=apic,
        package=apic >> pkg_shift,
        die=field(shift[3], shift[5]),
        module=field(shift[2], shift[3]),
        core=field(shift[1], shift[2]),
        thread=field(0, shift[1]),
        threads_per_core=levels[0][2],
        linux61_package=apic >> die61,
        linux61_core=(apic >> die61, field(core61, die61), field(shift[1], core61)),
    )


def _llc_key(cpu: Cpu, apic: int, leaf: int) -> dict[int, int]:
    """Cache level -> the id Linux derives for it: apic >> order(sharing count)."""
    out = {}
    for sub in range(8):
        e = cpu(leaf, sub)
        if e.eax & 0x1F == 0:
            break
        sharing = ((e.eax >> 14) & 0xFFF) + 1
        out[(e.eax >> 5) & 7] = apic >> (sharing - 1).bit_length()
    return out


def patched(
    host: tuple[CpuidEntry, ...], t: TopologyPlan, v: VcpuPlan, *, pvm: bool = False
) -> Cpu:
    return Cpu(patch_cpuid(host, v, t, vendor=vendor_of(host), pvm=pvm))


def madt_ids(plan) -> list[int]:
    """APIC ids in MADT order, parsed from the table bytes."""
    madt = build_acpi(plan).table("APIC")
    ids, off = [], 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        if kind == 0:
            ids.append(madt[off + 3])
        elif kind == 9:
            ids.append(struct.unpack_from("<I", madt, off + 4)[0])
        off += length
    return ids


def check_topology(host: tuple[CpuidEntry, ...], t: TopologyPlan) -> None:
    """Every vCPU decodes to its plan position; ids agree across CPUID, the plan and the MADT."""
    vcpus = vcpus_for(t)
    vendor = vendor_of(host)
    per_package = t.dies * t.clusters * t.cores * t.threads
    seen = []
    llcs: dict[int, set[tuple[int, int]]] = {}
    cores61: dict[tuple[int, int, int], list[int]] = {}
    for v in vcpus:
        cpu = patched(host, t, v)
        d = decode_ext_topology(cpu)
        assert d.apic_id == v.apic_id == cpu(0x1).ebx >> 24 | (v.apic_id & ~0xFF)
        if cpu(0x1F).ebx or (t.dies == 1 and t.clusters == 1):
            want = (v.package, v.die, v.cluster, v.core, v.thread)
        else:  # leaf 0xB only (AMD): dies and modules fold into the core number
            w = apic_id_widths(t)
            core = (v.apic_id >> w.core_shift) & ((1 << (w.package_shift - w.core_shift)) - 1)
            want = (v.package, 0, 0, core, v.thread)
        assert (d.package, d.die, d.module, d.core, d.thread) == want
        assert d.linux61_package == v.package, "6.1 kernels would misplace this vCPU's package"
        assert d.threads_per_core == t.threads
        cores61.setdefault(d.linux61_core, []).append(v.index)
        # leaf 1: addressable ids per package covers every vCPU of the package; HTT iff > 1
        assert (cpu(1).ebx >> 16) & 0xFF >= min(per_package, 0xFF)
        assert bool(cpu(1).edx & (1 << 28)) == (per_package > 1)
        assert cpu(1).ecx & (1 << 31)  # hypervisor
        if vendor == "intel":
            cores = ((cpu(4).eax >> 26) & 0x3F) + 1
            assert cores >= min(per_package // t.threads, 64)  # a 6-bit field
            caches = _llc_key(cpu, v.apic_id, 4)
        else:
            ecx8 = cpu(0x80000008).ecx
            assert v.apic_id >> ((ecx8 >> 12) & 0xF) == v.package
            assert (ecx8 & 0xFF) + 1 == per_package
            e1e = cpu(0x8000001E)
            assert e1e.eax == v.apic_id
            assert ((e1e.ebx >> 8) & 0xFF) + 1 == t.threads
            assert ((e1e.ecx >> 8) & 7) + 1 == t.dies
            assert e1e.ecx & 0xFF == v.package * t.dies + v.die
            seen.append((v.package, e1e.ebx & 0xFF, (v.die, v.cluster, v.core)))
            ext1 = cpu(0x80000001).ecx
            assert bool(ext1 & 2) == (per_package > 1)  # CmpLegacy
            assert ext1 & (1 << 22)  # TopoExt
            caches = _llc_key(cpu, v.apic_id, 0x8000001D)
        assert set(caches) == {1, 2, 3}
        llcs.setdefault(caches[3], set()).add((v.package, v.die))
        assert caches[1] == caches[2] == v.apic_id >> (t.threads - 1).bit_length()
    # Linux 6.1 sees each physical core once, with its threads as siblings.
    assert all(len(c) == t.threads for c in cores61.values())
    # The L3 is shared by exactly one die.
    assert all(len(s) == 1 for s in llcs.values())
    assert len(llcs) == t.sockets * t.dies
    if vendor == "amd":  # core ids are unique per package
        cores = {(p, c) for p, c, _ in seen}
        assert len(cores) == len({(p, pos) for p, _, pos in seen})

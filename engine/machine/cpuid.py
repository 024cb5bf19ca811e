"""Guest CPUID: the host's supported entries, patched to show the plan's topology. Pure.

``patch_cpuid(entries, vcpu, topology, vendor=..., pvm=...) -> list[CpuidEntry]`` takes the list
``KVM_GET_SUPPORTED_CPUID`` returned (any objects with ``function index flags eax ebx ecx edx``)
and returns a new, sorted list for one vCPU, ready for ``KVM_SET_CPUID2``. Nothing here touches
``/dev/kvm``; like Cloud Hypervisor's ``update_cpuid_topology`` it is a transform over a plain
entry list, so tests decode the result the way Linux does without a VM.

Why each leaf (docs/engine.md, "CPUID and APIC ids"): the guest derives its
sockets/dies/modules/cores/threads from the APIC id bit fields that CPUID describes, so the shifts
here must be the ones the plan's APIC ids were built with (``engine.machine.apicid.apic_id_widths``:
thread | core | cluster | die | package, each ``ceil(log2(count))`` bits, QEMU's
``apicid_from_topo_ids``); the MADT and SRAT carry the same ids, and the vCPU must be created with
``KVM_CREATE_VCPU(vcpu.apic_id)``.

- leaf 0x1: initial APIC id, addressable logical CPUs per package, HTT, hypervisor bit;
- leaf 0x4 (Intel): cores per package and the threads sharing each cache;
- leaf 0xB: SMT and core levels (core shift = the whole package), x2APIC id in EDX;
- leaf 0x1F (Intel, only when there are modules or dies): SMT/core/module/die levels;
- AMD 0x80000001 (CmpLegacy, TopoExt), 0x80000008 (NC, ApicIdCoreIdSize), 0x8000001D (cache
  sharing), 0x8000001E (extended APIC id, core id, threads per core, node id);
- ``pvm=True`` clears the features PVM's instruction emulator cannot run (``PVM_MASKS``).
Leaves 0xA (PMU) and 0x4000_0000+ (KVM paravirt) are passed through as the host offers them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from engine.machine.apicid import ApicIdWidths, apic_id_widths
from engine.plan import TopologyPlan, VcpuPlan

if TYPE_CHECKING:
    from typing import Literal

    Vendor = Literal["intel", "amd"]

#: kvm_cpuid_entry2.flags: the entry applies to one subleaf (``index``) only.
SIGNIFICANT_INDEX = 1


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """One CPUID leaf/subleaf, mirroring ``struct kvm_cpuid_entry2`` (minus padding)."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


class CpuidLike(Protocol):
    """A CPUID entry to read: ``CpuidEntry`` or KVM's ``struct kvm_cpuid_entry2``."""

    @property
    def function(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def eax(self) -> int: ...
    @property
    def ebx(self) -> int: ...
    @property
    def ecx(self) -> int: ...
    @property
    def edx(self) -> int: ...


def vendor_of(entries: Iterable[CpuidLike]) -> Vendor:
    """The vendor leaf 0 names: ``"amd"`` for AuthenticAMD/HygonGenuine, else ``"intel"``."""
    for e in entries:
        if e.function == 0:
            sig = b"".join(r.to_bytes(4, "little") for r in (e.ebx, e.edx, e.ecx))
            return "amd" if sig in (b"AuthenticAMD", b"HygonGenuine") else "intel"
    return "intel"


# -- bit positions ----------------------------------------------------------------------------

L1_ECX_HYPERVISOR = 1 << 31
L1_EDX_HTT = 1 << 28
EXT1_ECX_CMP_LEGACY = 1 << 1
EXT1_ECX_TOPOEXT = 1 << 22

# Leaf 0xB / 0x1F level types (Intel SDM vol. 2A, CPUID leaf 1FH).
LEVEL_INVALID, LEVEL_SMT, LEVEL_CORE, LEVEL_MODULE, LEVEL_DIE = 0, 1, 2, 3, 5


@dataclass(frozen=True, slots=True)
class FeatureMask:
    """Bits to clear in one register of one leaf/subleaf, and why."""

    function: int
    index: int
    reg: Literal["eax", "ebx", "ecx", "edx"]
    bits: tuple[int, ...]
    why: str

    @property
    def mask(self) -> int:
        return sum(1 << b for b in self.bits)


#: Features a stock kernel must not see on a PVM host, where its CPL0 code runs in KVM's
#: instruction emulator (docs/engine.md, "PVM hosts": what fails there, and why each row).
#: The first rows are what was measured there; the rest the same instruction classes, defensively.
PVM_MASKS: tuple[FeatureMask, ...] = (
    # measured: the emulator fails (or the instruction faults), or is slow (ERMS, FSRM):
    FeatureMask(
        0x1,
        0,
        "ecx",
        (1, 13, 20, 22, 23, 25, 26, 27, 28),
        "emulation fails: PCLMUL CX16 SSE4.2 MOVBE POPCNT AES XSAVE OSXSAVE AVX",
    ),
    FeatureMask(
        0x7,
        0,
        "ebx",
        (5, 9, 16, 17, 21, 26, 27, 28, 30, 31),
        "emulation fails: AVX2 AVX512*; slow: ERMS",
    ),
    FeatureMask(0x7, 0, "ecx", (22,), "faults: RDPID"),
    FeatureMask(0x7, 0, "edx", (4,), "slow: FSRM"),
    FeatureMask(0x80000001, 0, "edx", (27,), "emulation fails: RDTSCP"),
    # defensive, same instruction classes (SIMD past SSE2, VEX, fast-string hints), not measured:
    FeatureMask(0x1, 0, "ecx", (0, 9, 12, 19, 29), "SSE3 SSSE3 FMA SSE4.1 F16C"),
    FeatureMask(0x7, 0, "ebx", (3, 8, 10, 19, 29), "BMI1 BMI2 (VEX) INVPCID ADX SHA"),
    FeatureMask(
        0x7,
        0,
        "ecx",
        (1, 6, 8, 9, 10, 11, 12, 14),
        "AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ GFNI VAES VPCLMULQDQ",
    ),
    FeatureMask(
        0x7, 0, "edx", (2, 3, 8, 22, 23, 24, 25), "AVX512_4VNNIW/4FMAPS/VP2INTERSECT/FP16 AMX"
    ),
    FeatureMask(0x7, 1, "eax", (4, 5, 10, 11, 12), "AVX-VNNI AVX512_BF16 FZRM FSRS FSRC"),
    FeatureMask(0x80000001, 0, "ecx", (6, 11, 16, 21), "SSE4A XOP FMA4 TBM"),
)
PVM_DROP_LEAVES = frozenset({0xD})


# -- the transform ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Topo:
    """The per-package facts every leaf needs, computed once."""

    w: ApicIdWidths
    threads: int  # per core
    cores: int  # per cluster
    clusters: int  # per die
    dies: int  # per package
    apic_id: int
    package: int
    die: int

    @property
    def per_package(self) -> int:
        return self.threads * self.cores * self.clusters * self.dies

    @property
    def core_id_in_package(self) -> int:
        """Core number within its package: every APIC-id bit between thread and package."""
        span = self.w.package_shift - self.w.core_shift
        return (self.apic_id >> self.w.core_shift) & ((1 << span) - 1)


def patch_cpuid(
    entries: Iterable[CpuidLike],
    vcpu: VcpuPlan,
    topology: TopologyPlan,
    *,
    vendor: Vendor,
    pvm: bool,
) -> list[CpuidEntry]:
    """The CPUID table for ``vcpu``: topology leaves rewritten, PVM masks applied if ``pvm``.

    ``entries`` is not modified. The result is sorted by (function, index), so equal inputs
    give equal outputs.
    """
    table: dict[tuple[int, int], CpuidEntry] = {
        (e.function, e.index): CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in entries
    }
    topo = _Topo(
        apic_id_widths(topology),
        topology.threads,
        topology.cores,
        topology.clusters,
        topology.dies,
        vcpu.apic_id,
        vcpu.package,
        vcpu.die,
    )
    _leaf_1(table, topo)
    _leaf_b(table, topo)
    if vendor == "intel":
        _leaf_4(table, topo)
        _leaf_1f(table, topo)
    else:
        _amd_leaves(table, topo)
    if pvm:
        _mask_pvm(table)
    return [table[k] for k in sorted(table)]


def _set(table: dict[tuple[int, int], CpuidEntry], e: CpuidEntry, **regs: int) -> None:
    table[(e.function, e.index)] = replace(e, **regs)


def _raise_max_leaf(table: dict[tuple[int, int], CpuidEntry], leaf: int) -> None:
    base = 0x8000_0000 if leaf >= 0x8000_0000 else 0
    top = table.get((base, 0))
    if top is not None and top.eax < leaf:
        _set(table, top, eax=leaf)


def _replace_leaf(
    table: dict[tuple[int, int], CpuidEntry], function: int, new: list[CpuidEntry]
) -> None:
    for key in [k for k in table if k[0] == function]:
        del table[key]
    for e in new:
        table[(e.function, e.index)] = e


def _leaf_1(table: dict[tuple[int, int], CpuidEntry], t: _Topo) -> None:
    e = table.get((0x1, 0))
    if e is None:
        return
    addressable = min(1 << t.w.package_shift, 0xFF)  # EBX[23:16]: addressable ids per package
    ebx = (e.ebx & 0xFFFF) | (addressable << 16) | ((t.apic_id & 0xFF) << 24)
    edx = e.edx | L1_EDX_HTT if t.per_package > 1 else e.edx & ~L1_EDX_HTT
    _set(table, e, ebx=ebx, ecx=e.ecx | L1_ECX_HYPERVISOR, edx=edx)


def _levels(t: _Topo, *, extended: bool) -> list[tuple[int, int, int]]:
    """(type, shift, logical count) per level, innermost first.

    Leaf 0xB has SMT and core, the core level reaching up to the package. Leaf 0x1F adds a
    module level when there are clusters and a die level when there are dies *or* clusters:
    Linux before 6.9 ignores module levels and takes the package shift from the die (else
    core) level, so a trailing die level (one die: same shift as the module) keeps its
    package ids right.
    """
    w = t.w
    smt = (LEVEL_SMT, w.core_shift, t.threads)
    if not extended:
        return [smt, (LEVEL_CORE, w.package_shift, t.per_package)]
    levels = [smt, (LEVEL_CORE, w.cluster_shift, t.threads * t.cores)]
    if t.clusters > 1:
        levels.append((LEVEL_MODULE, w.die_shift, t.threads * t.cores * t.clusters))
    levels.append((LEVEL_DIE, w.package_shift, t.per_package))
    return levels


def _level_entries(function: int, t: _Topo, levels: list[tuple[int, int, int]]) -> list[CpuidEntry]:
    out = [
        CpuidEntry(
            function,
            i,
            SIGNIFICANT_INDEX,
            eax=shift & 0x1F,
            ebx=min(count, 0xFFFF),
            ecx=(kind << 8) | i,
            edx=t.apic_id,
        )
        for i, (kind, shift, count) in enumerate(levels)
    ]
    n = len(levels)
    out.append(CpuidEntry(function, n, SIGNIFICANT_INDEX, ecx=n, edx=t.apic_id))
    return out


def _leaf_b(table: dict[tuple[int, int], CpuidEntry], t: _Topo) -> None:
    _replace_leaf(table, 0xB, _level_entries(0xB, t, _levels(t, extended=False)))
    _raise_max_leaf(table, 0xB)


def _leaf_1f(table: dict[tuple[int, int], CpuidEntry], t: _Topo) -> None:
    if t.clusters == 1 and t.dies == 1:
        # Nothing beyond SMT/core: an all-zero 0x1F makes the guest use leaf 0xB (as QEMU).
        if any(k[0] == 0x1F for k in table):
            _replace_leaf(table, 0x1F, [CpuidEntry(0x1F, 0, SIGNIFICANT_INDEX)])
        return
    _replace_leaf(table, 0x1F, _level_entries(0x1F, t, _levels(t, extended=True)))
    _raise_max_leaf(table, 0x1F)


def _cache_sharing(t: _Topo, level: int) -> int:
    """Addressable ids sharing a cache: L1/L2 per core, L3 per die, anything else per package."""
    if level <= 2:
        return 1 << t.w.core_shift
    if level == 3:
        return 1 << t.w.die_shift
    return 1 << t.w.package_shift


def _leaf_4(table: dict[tuple[int, int], CpuidEntry], t: _Topo) -> None:
    cores = min((1 << (t.w.package_shift - t.w.core_shift)) - 1, 0x3F)
    for key in sorted(k for k in table if k[0] == 0x4):
        e = table[key]
        if e.eax & 0x1F == 0:  # cache type 0: no more caches
            continue
        sharing = min(_cache_sharing(t, (e.eax >> 5) & 7) - 1, 0xFFF)
        eax = (e.eax & 0x3FFF) | (sharing << 14) | (cores << 26)
        _set(table, e, eax=eax, flags=e.flags | SIGNIFICANT_INDEX)


def _amd_leaves(table: dict[tuple[int, int], CpuidEntry], t: _Topo) -> None:
    e = table.get((0x8000_0001, 0))
    if e is not None:
        ecx = e.ecx
        if t.per_package > 1:
            ecx |= EXT1_ECX_CMP_LEGACY | EXT1_ECX_TOPOEXT
        else:
            ecx &= ~EXT1_ECX_CMP_LEGACY
        _set(table, e, ecx=ecx)
    e = table.get((0x8000_0008, 0))
    if e is not None:
        nc = min(t.per_package - 1, 0xFF)
        _set(table, e, ecx=(e.ecx & ~0xF0FF) | (t.w.package_shift << 12) | nc)
    for key in sorted(k for k in table if k[0] == 0x8000_001D):
        e = table[key]
        if e.eax & 0x1F == 0:
            continue
        sharing = min(_cache_sharing(t, (e.eax >> 5) & 7) - 1, 0xFFF)
        _set(table, e, eax=(e.eax & ~(0xFFF << 14)) | (sharing << 14))
    if (0x8000_001E, 0) in table or t.per_package > 1:
        node_id = (t.package * t.dies + t.die) & 0xFF  # unique across the system (AMD APM)
        table[(0x8000_001E, 0)] = CpuidEntry(
            0x8000_001E,
            0,
            0,
            eax=t.apic_id,
            ebx=((t.threads - 1) << 8) | (t.core_id_in_package & 0xFF),
            ecx=(min(t.dies - 1, 7) << 8) | node_id,
        )
        _raise_max_leaf(table, 0x8000_001E)


def _mask_pvm(table: dict[tuple[int, int], CpuidEntry]) -> None:
    for key in [k for k in table if k[0] in PVM_DROP_LEAVES]:
        del table[key]
    for m in PVM_MASKS:
        e = table.get((m.function, m.index))
        if e is not None:
            _set(table, e, **{m.reg: getattr(e, m.reg) & ~m.mask})

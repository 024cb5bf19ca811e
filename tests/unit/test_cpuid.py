"""patch_cpuid: decode the patched leaves back into topology the way Linux does, for AMD and Intel.

The AMD list is this project's real development host (an AMD EPYC under PVM), captured with
``KVM_GET_SUPPORTED_CPUID``; the Intel list is hand-written after a Sapphire Rapids host. The
decoders below follow Linux: leaf 0x1F/0xB level shifts (6.9+ ``topology_ext.c``, and 6.1's
``detect_extended_topology`` which ignores module levels), leaf 4/0x8000001D cache sharing
(``init_intel_cacheinfo``, ``cacheinfo_amd_init_llc_id``), AMD 0x80000008/0x8000001E.
"""

from __future__ import annotations

import pytest
from acpi_plans import TOPOLOGIES, make_plan, topology_plan, vcpus_for
from cpuid_decode import (  # noqa: F401
    AMD_HOST,
    HOSTS,
    INTEL_HOST,
    Cpu,
    _levels,
    check_topology,
    decode_ext_topology,
    madt_ids,
    patched,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.machine.cpuid import (
    PVM_MASKS,
    CpuidEntry,
    patch_cpuid,
    vendor_of,
)

# -- tests -------------------------------------------------------------------------------------


def test_vendor_of() -> None:
    assert vendor_of(AMD_HOST) == "amd"
    assert vendor_of(INTEL_HOST) == "intel"


@pytest.mark.parametrize("vendor", ["amd", "intel"])
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_patched_leaves_decode_to_the_plan_topology(vendor: str, name: str) -> None:
    check_topology(HOSTS[vendor], topology_plan(*TOPOLOGIES[name]))


@settings(max_examples=60, deadline=None)
@given(
    vendor=st.sampled_from(["amd", "intel"]),
    dims=st.tuples(*(st.integers(1, n) for n in (3, 3, 3, 5, 3))).filter(
        lambda d: d[0] * d[1] * d[2] * d[3] * d[4] <= 254
    ),
)
def test_any_topology_decodes_to_the_plan(vendor: str, dims: tuple[int, ...]) -> None:
    check_topology(HOSTS[vendor], topology_plan(*dims))


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_cpuid_apic_ids_equal_the_madt(name: str) -> None:
    plan = make_plan(name)
    for host in HOSTS.values():
        ids = [patched(host, plan.topology, v)(0xB).edx for v in plan.vcpus]
        assert ids == madt_ids(plan) == [v.apic_id for v in plan.vcpus]


def test_leaf_1f_is_zero_without_modules_or_dies_and_listed_with_them() -> None:
    flat = topology_plan(2, 1, 1, 2, 2)
    cpu = patched(INTEL_HOST, flat, vcpus_for(flat)[0])
    assert cpu(0x1F).ebx == 0  # guest falls back to 0xB (host levels are gone)
    deep = topology_plan(1, 2, 2, 2, 2)
    cpu = patched(INTEL_HOST, deep, vcpus_for(deep)[5])
    assert [lv[0] for lv in _levels(cpu, 0x1F)] == [1, 2, 3, 5]
    assert cpu(0).eax >= 0x1F


def test_amd_host_gets_no_intel_leaf_1f() -> None:
    t = topology_plan(1, 2, 1, 2, 2)
    out = patch_cpuid(AMD_HOST, vcpus_for(t)[0], t, vendor="amd", pvm=False)
    assert not any(e.function == 0x1F for e in out)


def test_patch_is_pure_sorted_and_idempotent() -> None:
    t = topology_plan(2, 2, 1, 2, 2)
    v = vcpus_for(t)[7]
    for host in HOSTS.values():
        before = list(host)
        once = patch_cpuid(host, v, t, vendor=vendor_of(host), pvm=True)
        assert list(host) == before
        assert once == sorted(once, key=lambda e: (e.function, e.index))
        assert patch_cpuid(once, v, t, vendor=vendor_of(host), pvm=True) == once


def _bits(cpu: Cpu, function: int, index: int, reg: str) -> int:
    return getattr(cpu(function, index), reg)


def test_pvm_clears_every_listed_feature_and_drops_xsave_state() -> None:
    t = topology_plan(1, 1, 1, 2, 1)
    v = vcpus_for(t)[1]
    for host in HOSTS.values():
        cpu = patched(host, t, v, pvm=True)
        for m in PVM_MASKS:
            assert _bits(cpu, m.function, m.index, m.reg) & m.mask == 0, m.why
        assert not any(f == 0xD for f, _ in cpu.by_key)
        assert not cpu(1).ecx & (1 << 13)  # CX16: the one this host still advertises
        assert cpu(1).ecx & (1 << 21)  # x2APIC stays


def test_without_pvm_host_features_are_kept() -> None:
    t = topology_plan(1, 1, 1, 2, 1)
    v = vcpus_for(t)[0]
    cpu = patched(INTEL_HOST, t, v, pvm=False)
    assert cpu(1).ecx & (1 << 13) and cpu(1).ecx & (1 << 28)  # CX16, AVX
    assert cpu(7).ebx & (1 << 16)  # AVX512F
    assert cpu(0x80000001).edx & (1 << 27)  # RDTSCP
    assert (0xD, 0) in cpu.by_key
    amd = patched(AMD_HOST, t, v, pvm=False)
    assert amd(1).ecx & (1 << 13)


def test_pvm_masks_are_what_the_host_would_have_kept_otherwise() -> None:
    """Only the masked bits differ between pvm=True and pvm=False (topology is untouched)."""
    t = topology_plan(2, 1, 1, 2, 2)
    v = vcpus_for(t)[3]
    on = patched(INTEL_HOST, t, v, pvm=True)
    off = patched(INTEL_HOST, t, v, pvm=False)
    for key, e in off.by_key.items():
        if key[0] == 0xD:
            continue
        f = on.by_key[key]
        for reg in ("eax", "ebx", "ecx", "edx"):
            allowed = sum(m.mask for m in PVM_MASKS if (m.function, m.index, m.reg) == (*key, reg))
            assert getattr(e, reg) & ~allowed == getattr(f, reg), (hex(key[0]), reg)


def test_amd_cmp_legacy_and_topoext_are_set_when_the_host_lacks_them() -> None:
    bare = tuple(
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx & ~((1 << 22) | 2), e.edx)
        if e.function == 0x80000001
        else e
        for e in AMD_HOST
    )
    t = topology_plan(1, 1, 1, 2, 2)
    ecx = patched(bare, t, vcpus_for(t)[3])(0x80000001).ecx
    assert ecx & 2 and ecx & (1 << 22)
    one = topology_plan(1, 1, 1, 1, 1)
    assert not patched(AMD_HOST, one, vcpus_for(one)[0])(0x80000001).ecx & 2

"""The ACPI/CPUID test plans themselves: their APIC ids pack the topology as the compiler does."""

from __future__ import annotations

import pytest
from acpi_plans import TOPOLOGIES, make_plan


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_plan_apic_ids_pack_the_topology_fields(name: str) -> None:
    """The plans the ACPI/CPUID tests use carry unique ids built from (pkg, die, cluster, core, thread)."""
    plan = make_plan(name)
    t = plan.topology
    assert len(plan.vcpus) == t.sockets * t.dies * t.clusters * t.cores * t.threads
    ids = [v.apic_id for v in plan.vcpus]
    assert len(set(ids)) == len(ids)
    fields = {(v.package, v.die, v.cluster, v.core, v.thread) for v in plan.vcpus}
    assert len(fields) == len(ids)


def test_x2apic_plan_really_needs_x2apic() -> None:
    assert max(v.apic_id for v in make_plan("x2apic").vcpus) > 254

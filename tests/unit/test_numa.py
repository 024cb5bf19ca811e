"""Host NUMA: node checks against (fake and real) sysfs, and mbind read back from the kernel."""

from __future__ import annotations

import pytest
from tiny_guest import HANG, make_plan, write_guest

from engine.machine.ram import create_guest_memory
from engine.numa.host import check_host_nodes, host_nodes, parse_node_list, query_policy
from engine.plan import HostBinding
from launcher.errors import HostError

MiB = 1 << 20


def fake_sysfs(tmp_path, online: str) -> str:
    root = tmp_path / "node"
    root.mkdir()
    (root / "online").write_text(online + "\n")
    return str(root)


def test_parse_node_list() -> None:
    assert parse_node_list("0") == {0}
    assert parse_node_list("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}


def test_missing_host_node_is_named_with_a_hint(tmp_path) -> None:
    root = fake_sysfs(tmp_path, "0-1")
    assert host_nodes(root) == {0, 1}
    check_host_nodes([HostBinding(0, MiB, (1,), "bind")], root)
    with pytest.raises(HostError) as info:
        check_host_nodes([HostBinding(0x8000000, MiB, (1, 3), "bind")], root)
    assert "host node(s) 3" in str(info.value) and "has node(s) 0, 1" in str(info.value)
    assert "host-nodes" in info.value.hint


def test_missing_node_fails_before_anything_is_mapped(tmp_path) -> None:
    plan = make_plan(write_guest(tmp_path, HANG), node_sizes=[32 * MiB, 32 * MiB], host_nodes=(7,))
    with pytest.raises(HostError, match="host node"):
        create_guest_memory(plan.memory, sysfs_node_root=fake_sysfs(tmp_path, "0"))


@pytest.mark.parametrize("policy", ["bind", "preferred", "interleave", "default"])
def test_each_node_range_is_bound_per_its_policy(tmp_path, policy: str) -> None:
    node = min(host_nodes())
    plan = make_plan(
        write_guest(tmp_path, HANG),
        node_sizes=[32 * MiB, 64 * MiB],
        host_nodes=(node,),
        policy=policy,
        prealloc=True,
    )
    mem = create_guest_memory(plan.memory)
    try:
        for b in plan.memory.bindings:
            r = mem.find_region(b.guest_addr)
            assert r is not None
            for off in (b.guest_addr - r.guest_addr, b.guest_addr - r.guest_addr + b.size - 4096):
                got_policy, nodes = query_policy(r.host_addr + off)
                assert got_policy == policy
                if policy != "default":
                    assert nodes == {node}
        # memory outside any binding keeps the default policy
    finally:
        mem.close()

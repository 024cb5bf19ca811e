"""cgroups v1/v2 for the sandbox, on a fake cgroup tree in a temp dir (no root needed)."""

from __future__ import annotations

import os

import pytest

from engine.ozone.cgroup import CgroupSet, Limits, detect, parse_cpulist, parse_limits, parse_size
from engine.ozone.errors import SandboxError

V1_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"


def _put(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _get(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def v1(tmp_path):
    root = str(tmp_path)
    _put(f"{root}/proc/mounts", V1_MOUNTS)
    _put(f"{root}/sys/fs/cgroup/cpuset/cpuset.cpus", "0-3\n")
    _put(f"{root}/sys/fs/cgroup/cpuset/cpuset.mems", "0-1\n")
    os.makedirs(f"{root}/sys/fs/cgroup/memory")
    _put(f"{root}/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    return root


@pytest.fixture
def v2(tmp_path):
    root = str(tmp_path)
    _put(f"{root}/proc/mounts", V2_MOUNTS)
    cg = f"{root}/sys/fs/cgroup"
    _put(f"{cg}/cgroup.controllers", "cpuset cpu io memory pids\n")
    _put(f"{cg}/cpuset.cpus.effective", "0-7\n")
    _put(f"{cg}/cpuset.mems.effective", "0\n")
    return root


def _set(root: str, limits: Limits) -> CgroupSet:
    return CgroupSet(limits, "stratovirt", "vm1", root=root, proc_mounts=f"{root}/proc/mounts")


def test_detect_mixed_host_puts_controllers_on_v1(v1):
    found = detect(v1, f"{v1}/proc/mounts")
    assert (found["cpuset"].version, found["memory"].version) == (1, 1)
    assert found["cpuset"].mount == f"{v1}/sys/fs/cgroup/cpuset"
    assert found["hugetlb"].version == 2  # the only controller the unified tree offers here


def test_v1_create_writes_limits_and_inherits_empty_cpuset(v1):
    cg = _set(v1, Limits(cpus="1-2", mems="0", memory=256 << 20))
    cg.probe()
    cg.create()
    leaf = f"{v1}/sys/fs/cgroup/cpuset/stratovirt/vm1"
    assert _get(f"{leaf}/cpuset.cpus") == "1-2"
    assert _get(f"{leaf}/cpuset.mems") == "0"
    # the intermediate group got the parent's lists (a v1 cpuset refuses tasks when empty)
    assert _get(f"{v1}/sys/fs/cgroup/cpuset/stratovirt/cpuset.cpus") == "0-3"
    assert _get(f"{v1}/sys/fs/cgroup/cpuset/stratovirt/cpuset.mems") == "0-1"
    assert _get(f"{v1}/sys/fs/cgroup/memory/stratovirt/vm1/memory.limit_in_bytes") == str(256 << 20)
    cg.attach(4242)
    assert _get(f"{leaf}/cgroup.procs") == "4242"
    assert _get(f"{v1}/sys/fs/cgroup/memory/stratovirt/vm1/cgroup.procs") == "4242"
    assert len(cg.created) == 4


def test_v2_keys_keep_their_meaning(v2):
    cg = _set(v2, Limits(cpus="4-5", memory=1 << 30))
    cg.probe()
    cg.create()
    base = f"{v2}/sys/fs/cgroup"
    assert _get(f"{base}/stratovirt/vm1/cpuset.cpus") == "4-5"
    assert _get(f"{base}/stratovirt/vm1/memory.max") == str(1 << 30)
    assert not os.path.exists(f"{base}/stratovirt/vm1/memory.limit_in_bytes")
    assert "+memory" in _get(f"{base}/stratovirt/cgroup.subtree_control")
    assert cg.dirs() == [f"{base}/stratovirt/vm1"]  # one hierarchy on v2


def test_v2_unlimited_memory_is_max(v2):
    cg = _set(v2, Limits(memory=-1))
    cg.create()
    assert _get(f"{v2}/sys/fs/cgroup/stratovirt/vm1/memory.max") == "max"


def test_probe_refuses_cpus_the_host_lacks(v1):
    with pytest.raises(SandboxError) as e:
        _set(v1, Limits(cpus="4-5")).probe()
    assert "available: 0-3" in str(e.value) and "cpuset.cpus=4-5" in str(e.value)


def test_probe_refuses_numa_node_the_host_lacks(v2):
    with pytest.raises(SandboxError, match="NUMA nodes"):
        _set(v2, Limits(mems="1")).probe()


def test_missing_controller_is_named(tmp_path):
    root = str(tmp_path)
    _put(f"{root}/proc/mounts", "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n")
    os.makedirs(f"{root}/sys/fs/cgroup/cpuset")
    with pytest.raises(SandboxError) as e:
        _set(root, Limits(memory=1 << 20)).probe()
    assert "controller 'memory' is not mounted" in str(e.value)
    assert "hint" in str(e.value)


def test_existing_cgroup_is_refused_before_anything_is_made(v1):
    os.makedirs(f"{v1}/sys/fs/cgroup/memory/stratovirt/vm1")
    cg = _set(v1, Limits(memory=1 << 20))
    with pytest.raises(SandboxError, match="already exists"):
        cg.probe()
    assert cg.created == []


def test_remove_deepest_first_keeps_a_shared_group(v1):
    cg = _set(v1, Limits(memory=1 << 20))
    cg.create()
    other = f"{v1}/sys/fs/cgroup/memory/stratovirt/vm2"
    os.makedirs(other)  # another VM under the same exec group
    for d in cg.created:  # a real cgroupfs drops its control files with the dir
        for name in os.listdir(d):
            if os.path.isfile(os.path.join(d, name)):
                os.unlink(os.path.join(d, name))
    left = cg.remove()
    assert not os.path.exists(f"{v1}/sys/fs/cgroup/memory/stratovirt/vm1")
    assert left == [f"{v1}/sys/fs/cgroup/memory/stratovirt"] and os.path.isdir(other)


def test_remove_busy_leaf_names_the_processes(v1):
    cg = _set(v1, Limits(memory=1 << 20))
    cg.create(pid=77)  # the fake dir is not empty: rmdir fails as a busy cgroup would
    with pytest.raises(SandboxError) as e:
        cg.remove()
    assert "77" in str(e.value) and "stop the VM first" in str(e.value)


def test_parse_limits():
    lim, errs = parse_limits((("cpuset.cpus", "0-1,3"), ("memory.limit_in_bytes", "2G")), "0")
    assert errs == [] and lim == Limits("0-1,3", "0", 2 << 30)
    lim, _ = parse_limits((), None, bound_nodes=(1, 0, 1))
    assert lim.mems == "0,1" and lim.controllers == ("cpuset",)
    _, errs = parse_limits((("cpu.shares", "2"), ("cpuset.cpus", "3-1"), ("cpuset.cpus", "x")), "a")
    text = "\n".join(errs)
    assert "unsupported cgroup key 'cpu.shares'" in text
    assert "reversed" in text and "given twice" in text and "numa" in text


def test_parse_helpers():
    assert parse_cpulist("0-2,5") == {0, 1, 2, 5}
    assert parse_size("512M") == 512 << 20 and parse_size("max") == -1 and parse_size("100") == 100
    with pytest.raises(ValueError):
        parse_size("1.5G")
    with pytest.raises(ValueError):
        parse_cpulist("0,,1")

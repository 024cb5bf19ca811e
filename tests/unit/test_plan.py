"""compile_plan: the guest memory map, vCPUs, device slots and unsupported features."""

from __future__ import annotations

import pytest

from engine.machine import layout
from engine.plan import BlkPlan, NetPlan, Plan, SlotPlan
from launcher.compile.engine_plan import compile_plan, default_mac, unsupported_features
from launcher.errors import InvalidInput
from launcher.model import (
    Boot,
    Chardev,
    ChardevBackend,
    Console,
    Cpu,
    Discard,
    Drive,
    Machine,
    MachineType,
    Manifest,
    Memory,
    Net,
    Numa,
    NumaDistance,
    NumaNode,
    NumaPolicy,
    PciAddress,
    Transport,
    Vfio,
)

GiB = 1 << 30
MiB = 1 << 20


def vm(**kw) -> Manifest:
    kw.setdefault("boot", Boot(kernel="/k", cmdline="console=ttyS0"))
    return Manifest(name="t", **kw)


def test_small_guest_is_one_low_range() -> None:
    plan = compile_plan(vm(memory=Memory(size=512 * MiB)))
    assert [(r.guest_addr, r.size) for r in plan.memory.ranges] == [(0, 512 * MiB)]
    assert plan.memory.mmio_hole == (layout.MMIO32_START, layout.MMIO32_SIZE)


def test_large_guest_skips_the_mmio_hole() -> None:
    plan = compile_plan(vm(memory=Memory(size=4 * GiB)))
    assert [(r.guest_addr, r.size) for r in plan.memory.ranges] == [
        (0, 3 * GiB),
        (4 * GiB, 1 * GiB),
    ]


def test_numa_node_straddling_the_hole_gets_two_pieces_and_bindings() -> None:
    nodes = (
        NumaNode(0, (0, 1), 2 * GiB, (0,), NumaPolicy.BIND),
        NumaNode(1, (2, 3), 2 * GiB, (0,), NumaPolicy.INTERLEAVE),
    )
    plan = compile_plan(
        vm(cpu=Cpu(4), memory=Memory(size=4 * GiB), numa=Numa(nodes, (NumaDistance(0, 1, 30),)))
    )
    assert plan.numa is not None
    n0, n1 = plan.numa.nodes
    assert n0.ranges == ((0, 2 * GiB),)
    assert n1.ranges == ((2 * GiB, 1 * GiB), (4 * GiB, 1 * GiB))
    assert n1.cpus == (2, 3)
    assert plan.numa.distances == ((10, 30), (30, 10))
    assert [(b.guest_addr, b.policy) for b in plan.memory.bindings] == [
        (0, "bind"),
        (2 * GiB, "interleave"),
        (4 * GiB, "interleave"),
    ]


def test_uncovered_vcpus_join_node_zero_like_stratovirt() -> None:
    nodes = (
        NumaNode(0, (0,), 256 * MiB, (0,), NumaPolicy.BIND),
        NumaNode(1, (1,), 256 * MiB, (0,), NumaPolicy.BIND),
    )
    plan = compile_plan(vm(cpu=Cpu(4), memory=Memory(size=512 * MiB), numa=Numa(nodes)))
    assert plan.numa.nodes[0].cpus == (0, 2, 3)
    assert [v.node for v in plan.vcpus] == [0, 1, 0, 0]


def test_vcpus_follow_the_topology() -> None:
    plan = compile_plan(vm(cpu=Cpu(8, sockets=2, cores=2, threads=2)))
    assert [(v.package, v.core, v.thread) for v in plan.vcpus[:4]] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 1, 1),
    ]
    assert plan.vcpus[4].package == 1
    assert [v.apic_id for v in plan.vcpus] == [0, 1, 2, 3, 4, 5, 6, 7]
    # 3 cores need 2 bits: the APIC ids of the second package start at 4, not 3.
    plan = compile_plan(vm(cpu=Cpu(6, sockets=2, cores=3)))
    assert [v.apic_id for v in plan.vcpus] == [0, 1, 2, 4, 5, 6]


def test_microvm_precreates_four_block_and_two_net_slots() -> None:
    plan = compile_plan(
        vm(
            drives=(Drive("root", "/r.img", readonly=True, serial="s1"),),
            nets=(Net("n0", ifname="tap0"),),
        )
    )
    kinds = [(type(d).__name__, d.irq) for d in plan.devices]
    assert kinds == [
        ("BlkPlan", 5),
        ("SlotPlan", 6),
        ("SlotPlan", 7),
        ("SlotPlan", 8),
        ("NetPlan", 9),
        ("SlotPlan", 10),
    ]
    blk = plan.devices[0]
    assert isinstance(blk, BlkPlan) and blk.readonly and blk.serial == "s1"
    assert blk.aio == "native"  # StratoVirt: direct=on implies aio=native
    assert blk.discard == "ignore"  # StratoVirt's default: the guest gets no discard
    assert isinstance(plan.devices[5], SlotPlan) and plan.devices[5].accepts == "net"
    bases = [d.mmio_base for d in plan.devices]
    assert bases == [layout.VIRTIO_MMIO_BASE + i * layout.VIRTIO_MMIO_STRIDE for i in range(6)]


def test_drive_keys_reach_the_plan_by_their_declaration() -> None:
    """``plan=`` on a key is all it takes: queues, discard and the rest land in BlkPlan."""
    d = Drive("d", "/d.img", queues=2, queue_size=64, discard=Discard.UNMAP, iops=10)
    blk = compile_plan(vm(drives=(d,))).devices[0]
    assert isinstance(blk, BlkPlan)
    assert (blk.num_queues, blk.queue_size, blk.discard, blk.iops) == (2, 64, "unmap", 10)
    assert (blk.drive_id, blk.id, blk.file) == ("d", "d", "/d.img")


def test_net_gets_a_stable_default_mac() -> None:
    plan = compile_plan(vm(nets=(Net("n0", ifname="tap0"),)))
    net = next(d for d in plan.devices if isinstance(d, NetPlan))
    assert net.mac == default_mac("t", "n0")
    assert net.mac.startswith("52:54:00:") and default_mac("t", "n1") != net.mac


def test_console_carries_its_chardev() -> None:
    plan = compile_plan(
        vm(
            chardevs=(Chardev("c0", ChardevBackend.SOCKET, "/run/c.sock", True, True),),
            consoles=(Console("con0", "c0"),),
        )
    )
    con = plan.devices[-1]
    assert con.kind == "console" and con.chardev.path == "/run/c.sock"


def test_unsupported_features_are_all_reported() -> None:
    m = vm(
        machine=Machine(type=MachineType.Q35),
        drives=(Drive("d", "/d", transport=Transport.PCI),),
        vfio=(Vfio("v", PciAddress("pcie.0", 3), host="0000:00:01.0"),),
    )
    issues = unsupported_features(m)
    assert {i.path for i in issues} == {"machine.type", "drives.d.transport", "vfio.v"}
    with pytest.raises(InvalidInput) as exc:
        compile_plan(m)
    assert len(exc.value.issues) == 3


def test_maxcpus_beyond_cpus_is_refused_for_the_engine() -> None:
    """The engine has no vCPU hot-plug: room for more vCPUs would be accepted and never usable."""
    (issue,) = unsupported_features(vm(cpu=Cpu(2, maxcpus=4)))
    assert issue.path == "cpu.maxcpus" and issue.code == "engine-unsupported"
    assert "maxcpus 4 > cpus 2" in issue.message
    assert unsupported_features(vm(cpu=Cpu(2, maxcpus=2))) == []


def test_plan_json_round_trip() -> None:
    plan = compile_plan(
        vm(
            cpu=Cpu(2),
            drives=(Drive("root", "/r.img"),),
            serial=Chardev("serial_chardev", ChardevBackend.STDIO),
            qmp=("/run/t.qmp",),
        )
    )
    again = Plan.loads(plan.dumps())
    assert again == plan
    assert isinstance(again.devices[0], BlkPlan)
    assert {f.role for f in again.host_files} >= {"kernel", "drive", "qmp"}


def test_plan_version_is_checked() -> None:
    data = compile_plan(vm()).to_json()
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        Plan.from_json(data)


def test_too_many_devices_is_a_located_error_not_a_crash() -> None:
    from launcher.model import Rng

    rngs = tuple(Rng(f"r{i}") for i in range(layout.MAX_MMIO_DEVICES))
    with pytest.raises(InvalidInput) as exc:
        compile_plan(vm(rngs=rngs))
    assert exc.value.issues[0].code == "engine-too-many-devices"
    assert len(compile_plan(vm(rngs=rngs[: layout.MAX_MMIO_DEVICES - 6])).devices) == (
        layout.MAX_MMIO_DEVICES
    )

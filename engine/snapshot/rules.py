"""What cannot be snapshotted, and what a restore must not change (pure: the engine's contract).

StratoVirt (docs/stratovirt.md, "Snapshots") does not snapshot vhost-net, VFIO, balloon,
hugepages, shared memory or a memory backend file, and a restore's ``smp``, ``m``, devices
(number, kind, bus/addr) and some device attributes must equal the template's. The engine
checks the same on plan values: ``snapshot_refusals`` when QMP ``migrate`` is asked and before
a restore, ``plan_differences`` between the plan a snapshot recorded and the plan restoring
it. The launcher runs both too, to report them at manifest keys (``launcher/validate``).

May differ on restore (that is what makes clones): the VM name, QMP sockets, chardev
backends, drive files (the same disk or a copy: its size is checked), tap names and fds, MAC
addresses, the vsock CID, iothreads, host NUMA bindings, the sandbox, logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: per device kind, the plan fields the guest's driver depends on (queues, features, config)
FIXED_DEVICE_FIELDS: dict[str, tuple[str, ...]] = {
    "blk": ("readonly", "discard", "num_queues", "queue_size", "serial"),
    "net": ("queue_pairs", "mq", "queue_size", "vhost"),
    "console": (),
    "rng": (),
    "vsock": (),
    "balloon": ("deflate_on_oom", "free_page_reporting"),
    "slot": ("accepts",),
}
#: plan class of each device kind (for the ``Plan.field`` names the launcher maps to keys)
KIND_CLASS = {
    "blk": "BlkPlan",
    "net": "NetPlan",
    "console": "ConsolePlan",
    "rng": "RngPlan",
    "vsock": "VsockPlan",
    "balloon": "BalloonPlan",
    "slot": "SlotPlan",
}


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the restoring plan changes that the snapshot's guest depends on.

    ``field`` is the plan field (``"MemoryPlan.size"``, ``"BlkPlan.queue_size"``); ``device``
    the device id in the new plan (None for VM-wide fields).
    """

    field: str
    what: str
    recorded: Any
    current: Any
    device: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.what}: the snapshot has {_show(self.recorded)}, this VM {_show(self.current)}"
        )


def _show(v: Any) -> str:
    if isinstance(v, list | tuple) and len(v) > 4:
        return f"{len(v)} entries"
    return str(v)


def snapshot_refusals(plan: Any, devices: Iterable[Any] | None = None) -> list[str]:
    """Why a VM of ``plan`` cannot be snapshotted or restored (empty: it can). ``devices``:
    the devices it has now (hot-replaced ones), default the plan's."""
    reasons = []
    mem = plan.memory
    if mem.mem_path:
        reasons.append(
            f"guest RAM is backed by {mem.mem_path} (mem-path: hugepages or a memory backend "
            "file), which StratoVirt does not snapshot"
        )
    if mem.shared:
        reasons.append(
            "guest RAM is shared (machine mem-share), which StratoVirt does not snapshot"
        )
    for d in plan.devices if devices is None else devices:
        if d.kind == "balloon":
            reasons.append(f"balloon {d.id}: StratoVirt does not snapshot a virtio-balloon")
        elif d.kind == "net" and d.vhost:
            reasons.append(f"NIC {d.id} uses vhost-net, which StratoVirt does not snapshot")
    return reasons


def _node_shape(numa: Mapping[str, Any] | None) -> Any:
    """The guest-visible part of a NUMA plan (host bindings may change)."""
    if not numa:
        return None
    nodes = [(n["id"], n["cpus"], n["size"], n["ranges"]) for n in numa["nodes"]]
    return [nodes, numa["distances"]]


def plan_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[Difference]:
    """What ``current`` (a plan's JSON) changes of ``recorded`` that must stay the same."""
    out: list[Difference] = []

    def same(field: str, what: str, a: Any, b: Any, device: str | None = None) -> None:
        if _norm(a) != _norm(b):
            out.append(Difference(field, what, a, b, device))

    same("Plan.arch", "architecture", recorded.get("arch"), current.get("arch"))
    same("Plan.machine", "machine type", recorded.get("machine"), current.get("machine"))
    rm, cm = recorded["memory"], current["memory"]
    same("MemoryPlan.size", "guest RAM size", rm["size"], cm["size"])
    if rm["size"] == cm["size"]:
        ra, rb = ([(r["guest_addr"], r["size"]) for r in m["ranges"]] for m in (rm, cm))
        same("MemoryPlan.ranges", "guest RAM layout", ra, rb)
    rt, ct = recorded["topology"], current["topology"]
    keys = [k for k in ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")
            if rt[k] != ct[k]]  # fmt: skip
    if keys:  # one difference, at the first key: the others are mostly derived from it
        sa, sb = (" ".join(f"{k}={t[k]}" for k in keys) for t in (rt, ct))
        out.append(Difference(f"TopologyPlan.{keys[0]}", "vCPU topology", sa, sb))
    else:
        ia, ib = ([v["apic_id"] for v in p["vcpus"]] for p in (recorded, current))
        same("VcpuPlan.apic_id", "vCPU APIC ids", ia, ib)
    same(
        "Plan.numa",
        "guest NUMA nodes",
        _node_shape(recorded.get("numa")),
        _node_shape(current.get("numa")),
    )
    rs, cs = recorded.get("serial"), current.get("serial")
    same("Plan.serial", "serial port", rs is not None, cs is not None)
    if rs and cs:
        same("SerialPlan.port", "serial port address", rs["port"], cs["port"])
        same("SerialPlan.irq", "serial port IRQ", rs["irq"], cs["irq"])
    rd, cd = recorded["devices"], current["devices"]
    if len(rd) != len(cd):
        out.append(
            Difference(
                "Plan.devices",
                "virtio-mmio devices",
                [f"{d['kind']} {d['id']}" for d in rd],
                [f"{d['kind']} {d['id']}" for d in cd],
            )
        )
        return out
    for i, (a, b) in enumerate(zip(rd, cd, strict=True)):
        dev = b["id"]
        cls = KIND_CLASS.get(b["kind"], "DevicePlan")
        if a["kind"] != b["kind"]:
            out.append(
                Difference(
                    f"{cls}.kind",
                    f"virtio-mmio device {i + 1}",
                    f"{a['kind']} {a['id']}",
                    f"{b['kind']} {b['id']}",
                    dev,
                )
            )
            continue
        where = f"{b['kind']} {dev}"
        same(f"{cls}.mmio_base", f"{where}: MMIO address", a["mmio_base"], b["mmio_base"], dev)
        same(f"{cls}.irq", f"{where}: IRQ", a["irq"], b["irq"], dev)
        for key in FIXED_DEVICE_FIELDS.get(b["kind"], ()):
            same(f"{cls}.{key}", f"{where}: {key.replace('_', '-')}", a.get(key), b.get(key), dev)
    return out


def _norm(v: Any) -> Any:
    """Lists and tuples compare alike (JSON has no tuples)."""
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    return v

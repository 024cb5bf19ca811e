"""Device ids, transports, PCI placement and microvm budgets (docs/stratovirt.md, "PCI placement"
and "Machine types").

microvm pre-creates 4 block + 2 net virtio-mmio slots and hands every other virtio-mmio device
an IRQ from a fixed pool (x86_64 lines 5-15; aarch64 160 SPIs, one taken by the RTC); standard
VMs place devices on pcie.0 (slot 0 and, on q35, 0x1f belong to the chipset) or on root ports.
"""

from __future__ import annotations

from launcher import model as m
from launcher.validate.base import Context
from launcher.validate.inventory import Device, devices

BLK_SLOTS, NET_SLOTS = 4, 2
IRQ_POOL = {m.Arch.X86_64: 11, m.Arch.AARCH64: 159}


def check(ctx: Context) -> None:
    man = ctx.manifest
    if man.machine.type is m.MachineType.NONE:
        return
    devs = devices(man)
    _transports(ctx, devs)
    if ctx.standard:
        _standard_ids(ctx, devs)
        _placement(ctx, devs)
    else:
        _microvm(ctx, devs)


def _transports(ctx: Context, devs: list[Device]) -> None:
    for d in devs:
        if not d.virtio:
            continue
        transport = d.transport or ctx.default_transport()
        if ctx.standard and transport is m.Transport.MMIO:
            ctx.add(
                "transport-machine",
                (*d.path, "transport"),
                f"{d.kind} uses virtio-mmio, which standard VMs (q35/virt) do not support",
                'remove transport (pci is the default there) or use machine.type = "microvm"',
            )
        elif not ctx.standard and transport is m.Transport.PCI:
            ctx.add(
                "transport-machine",
                (*d.path, "transport"),
                f"{d.kind} uses virtio-pci, which a microvm does not have",
                'remove transport (mmio is the default) or use machine.type = "q35"',
            )
        elif transport is m.Transport.MMIO and d.pci is not None:
            ctx.add(
                "pci-on-mmio",
                (*d.path, "addr"),
                f"bus/addr/multifunction only apply to virtio-pci; this {d.kind} uses virtio-mmio",
                "remove the PCI placement",
            )
        elif transport is m.Transport.PCI and d.pci is None:
            ctx.add(
                "pci-addr-required",
                d.path,
                f"this {d.kind} is a PCI device and needs addr (StratoVirt requires bus and addr)",
                'add addr = "0x<free slot>"',
            )


def _standard_ids(ctx: Context, devs: list[Device]) -> None:
    seen: dict[str, Device] = {}
    for d in devs:
        if d.kind == "console":
            continue
        if not d.id:
            ctx.add(
                "device-id-required",
                d.path,
                f"every device on a standard VM needs an id; this {d.kind} has none",
                f'add id = "{d.kind}0"',
            )
            continue
        if d.id in seen and d.kind not in ("usb-kbd", "usb-tablet"):
            ctx.add(
                "device-id-duplicate",
                d.path,
                f"device id {d.id!r} is already used by {_where(seen[d.id])}",
                "rename one of them (device-id for drives/nets)",
            )
        if d.id == "pcie.0":
            ctx.add(
                "device-id-duplicate", d.path, "'pcie.0' is the root bus name", "choose another id"
            )
        seen.setdefault(d.id, d)


def _where(d: Device) -> str:
    return ".".join(str(k) for k in d.path)


def _placement(ctx: Context, devs: list[Device]) -> None:
    man = ctx.manifest
    buses = {"pcie.0"}
    used: dict[tuple[str, int, int], Device] = {}
    single: dict[tuple[str, int], Device] = {}  # function-0 devices without multifunction
    reserved = {0, 0x1F} if man.machine.type is m.MachineType.Q35 else {0}
    for d in devs:
        pci = d.pci
        if pci is None:
            continue
        ap = (*d.path, "addr")
        if pci.bus not in buses:
            later = any(rp.id == pci.bus for rp in man.root_ports)
            ctx.add(
                "pci-bus-unknown",
                (*d.path, "bus"),
                f"bus {pci.bus!r} "
                + (
                    "is a root port declared later; it must come first"
                    if later
                    else "does not exist"
                ),
                'use "pcie.0" or the id of a root port declared before this device',
            )
        elif pci.bus == "pcie.0" and pci.slot in reserved:
            ctx.add(
                "pci-slot-reserved",
                ap,
                f"slot {pci.slot:#x} of pcie.0 is taken by the chipset",
                "use a slot from 0x1 to 0x1e",
            )
        elif pci.bus != "pcie.0" and pci.slot != 0:
            ctx.add(
                "pci-root-port-slot",
                ap,
                f"devices behind root port {pci.bus!r} must use slot 0, got {pci.slot:#x}",
                'use addr = "0x0"',
            )
        key = (pci.bus, pci.slot, pci.function)
        if key in used:
            ctx.add(
                "pci-devfn-duplicate",
                ap,
                f"{pci.bus} {pci.addr} is already used by {_where(used[key])}",
                "choose a free slot",
            )
        else:
            used[key] = d
        slot = (pci.bus, pci.slot)
        if pci.function == 0 and not pci.multifunction:
            others = [u for k, u in used.items() if k[:2] == slot and k[2] != 0]
            if others:
                _mf(ctx, d, others[0])
            single[slot] = d
        elif pci.function != 0 and slot in single:
            _mf(ctx, single[slot], d)
        if d.kind == "root-port":
            buses.add(d.id or "")


def _mf(ctx: Context, f0: Device, other: Device) -> None:
    ctx.add(
        "pci-multifunction",
        (*other.path, "addr"),
        f"slot is shared with {_where(f0)} (function 0) which does not set multifunction",
        f"set multifunction = true on {_where(f0)}",
    )


def _microvm(ctx: Context, devs: list[Device]) -> None:
    man = ctx.manifest
    blk = [d for d in devs if d.kind == "blk"]
    net = [d for d in devs if d.kind == "net" and not d.vhost_net]
    if len(blk) > BLK_SLOTS:
        ctx.add(
            "microvm-blk-limit",
            blk[BLK_SLOTS].path,
            f"{len(blk)} attached drives; a microvm has {BLK_SLOTS} block slots",
            "detach drives (attached = false) or use q35",
        )
    if len(net) > NET_SLOTS:
        ctx.add(
            "microvm-net-limit",
            net[NET_SLOTS].path,
            f"{len(net)} NICs; a microvm has {NET_SLOTS} net slots (vhost nets excepted)",
            "use vhost = true or q35",
        )
    for group in (blk, net):
        seen: set[str] = set()
        for d in group:
            if d.id in seen:
                ctx.add(
                    "device-id-duplicate",
                    d.path,
                    f"device id {d.id!r} is used twice",
                    "set a distinct device-id",
                )
            seen.add(d.id or "")
    extra = [
        d
        for d in devs
        if d.kind in ("vsock", "balloon", "rng", "console") or (d.kind == "net" and d.vhost_net)
    ]
    budget = IRQ_POOL[man.arch] - BLK_SLOTS - NET_SLOTS
    if len(extra) > budget:
        ctx.add(
            "microvm-irq-limit",
            extra[budget].path,
            f"{len(extra)} extra virtio-mmio"
            f" devices (consoles, vsock, balloon, rng, vhost nets); the microvm IRQ pool"
            f" leaves room for {budget}",
            "drop some devices or use q35",
        )

"""virtio-blk and virtio-net rules (docs/stratovirt.md, "Drives" and "NICs").

The per-device rules (serial and tap-name lengths, MAC, aio/direct) are the engine's
(``engine.device_rules``), which QMP hot-plug applies too; this module reports them at the
manifest key that feeds the plan field (the key's ``plan=`` declaration), and adds the rules
that span devices (shared images, duplicate MACs, boot indexes) or concern only StratoVirt's
argv. Ranges (queue sizes and counts, iops, bootindex) are declared limits
(``launcher.validate.limits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from engine import device_rules as rules
from launcher import keys as k
from launcher import model as m
from launcher.validate.base import Context


def _report(
    ctx: Context, where: tuple, problems: Sequence[rules.Problem | None], cls: type, plan: str
) -> None:
    """Each engine rule broken, at the manifest key declared to feed ``plan.<field>``."""
    for pr in problems:
        if pr is not None:
            ctx.add(pr.code, (*where, _keys(cls)[f"{plan}.{pr.field}"]), pr.message, pr.hint)


@cache
def _keys(cls: type) -> dict[str, str]:
    """plan field -> the manifest key that feeds it."""
    return {s.decl.plan: s.name for s in k.specs(cls) if s.decl.plan}


def check(ctx: Context) -> None:
    _drives(ctx)
    _nets(ctx)


def _drives(ctx: Context) -> None:
    man = ctx.manifest
    files: dict[str, list[m.Drive]] = {}
    boot: dict[int, str] = {}
    for d in man.drives:
        p = ("drives", d.id)
        files.setdefault(d.file, []).append(d)
        if d.format != "raw":
            ctx.add(
                "drive-format",
                (*p, "format"),
                f"format {d.format!r} is not supported by StratoVirt v2.2.0 (raw only)",
                "convert the image: qemu-img convert -O raw",
            )
        if d.discard is m.Discard.UNMAP and ctx.target == "stratovirt":
            ctx.warn(
                "drive-discard",
                (*p, "discard"),
                "StratoVirt reads -drive discard= from v2.3 on; v2.2 refuses the key",
                'run it with StratoVirt >= 2.3 or the builtin engine, or drop discard = "unmap"',
            )
        aio = str(d.aio) if d.aio else rules.default_aio(d.direct)
        _report(
            ctx,
            p,
            [rules.aio_problem(aio, d.direct), rules.serial_problem(d.serial)],
            m.Drive,
            "BlkPlan",
        )
        if d.bootindex is not None:
            if d.bootindex in boot and d.attached:
                ctx.add(
                    "bootindex",
                    (*p, "bootindex"),
                    f"bootindex {d.bootindex} is already used by drive {boot[d.bootindex]!r}",
                    "give each disk its own index",
                )
            if d.attached:
                boot.setdefault(d.bootindex, d.id)
        if not d.attached:
            extra = [
                k
                for k, v in (
                    ("serial", d.serial),
                    ("iothread", d.iothread),
                    ("queues", d.queues),
                    ("bootindex", d.bootindex),
                    ("device-id", d.device_id),
                    ("addr", d.pci),
                )
                if v is not None
            ]
            if extra:
                ctx.warn(
                    "drive-detached",
                    (*p, "attached"),
                    f"attached = false: {', '.join(extra)}"
                    " only apply to the device and are ignored",
                    "remove them",
                )
    for path, users in files.items():
        if len(users) > 1 and not all(u.readonly for u in users):
            ids = ", ".join(u.id for u in users)
            ctx.add(
                "drive-shared",
                ("drives", users[1].id, "file"),
                f"{path} backs drives {ids}; a shared image must be read-only everywhere",
                "set readonly = true on all of them or use separate images",
            )


def _nets(ctx: Context) -> None:
    man = ctx.manifest
    macs: dict[str, str] = {}
    for n in man.nets:
        p = ("nets", n.id)
        if n.type is m.NetType.TAP:
            if not n.ifname and not n.fds:
                ctx.add("net-backend", p, "a tap netdev needs ifname or fds", 'add ifname = "tap0"')
            if n.ifname and n.fds:
                ctx.warn(
                    "net-backend",
                    (*p, "fds"),
                    "ifname and fds both given: StratoVirt uses"
                    " one or the other depending on vhost",
                    "give only one of them",
                )
            if n.chardev:
                ctx.add(
                    "net-backend",
                    (*p, "chardev"),
                    "chardev only applies to vhost-user",
                    'remove chardev or set type = "vhost-user"',
                )
        else:
            if not n.chardev:
                ctx.add(
                    "net-backend",
                    p,
                    "a vhost-user netdev needs chardev (its socket)",
                    'declare a [chardevs.<id>] socket and set chardev = "<id>"',
                )
            if n.vhost is not None:
                ctx.add(
                    "net-backend",
                    (*p, "vhost"),
                    "vhost on a vhost-user netdev changes its"
                    " type (on: vhost-kernel, off: no vhost)",
                    "remove vhost",
                )
            if n.ifname or n.fds:
                ctx.add(
                    "net-backend",
                    (*p, "ifname" if n.ifname else "fds"),
                    "ifname/fds only apply to tap",
                    "remove them",
                )
            if n.attached and (n.transport or ctx.default_transport()) is m.Transport.MMIO:
                ctx.add(
                    "net-vhost-user-mmio",
                    p,
                    "vhost-user net only works as virtio-net-pci"
                    " (StratoVirt mishandles it on mmio)",
                    "use a q35/virt machine",
                )
            if not (man.machine.mem_share and man.memory.path):
                ctx.warn(
                    "vhost-user-shared-memory",
                    p,
                    "vhost-user backends need shared hugepage memory",
                    "set machine.mem-share = true and memory.path to a hugetlbfs mount",
                )
        _report(ctx, p, [rules.ifname_problem(n.ifname)], m.Net, "NetPlan")
        for key, fds in (("fds", n.fds), ("vhostfds", n.vhostfds)):
            if len(fds) > 16:
                ctx.add(
                    "net-queues",
                    (*p, key),
                    f"{len(fds)} {key}; at most 16 (one per queue pair)",
                    "pass at most 16",
                )
        if n.vhostfds and not n.vhost:
            ctx.add(
                "net-queues",
                (*p, "vhostfds"),
                "vhostfds need vhost = true",
                "set vhost = true or remove vhostfds",
            )
        mac = rules.mac_problem(n.mac)
        if n.mac is not None:
            if mac is not None:
                _report(ctx, p, [mac], m.Net, "NetPlan")
            elif n.mac.lower() in macs:
                ctx.warn(
                    "net-mac",
                    (*p, "mac"),
                    f"mac {n.mac} is also used by net {macs[n.mac.lower()]!r}",
                    "give each NIC its own MAC",
                )
            else:
                macs[n.mac.lower()] = n.id

"""virtio-blk and virtio-net rules (stratovirt-spec §4.15, §4.17-§4.19)."""

from __future__ import annotations

from launcher import model as m
from launcher.manifest.values import is_mac
from launcher.validate.base import Context

MAX_IOPS = 1_000_000
MAX_SERIAL = 20
MAX_IFNAME = 15


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


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
        aio = d.aio or (m.Aio.NATIVE if d.direct else m.Aio.OFF)
        if aio is m.Aio.NATIVE and not d.direct:
            ctx.add(
                "drive-aio",
                (*p, "aio"),
                'aio = "native" needs direct = true',
                'set direct = true, or aio = "io_uring" / "off"',
            )
        if aio is m.Aio.OFF and d.direct:
            ctx.add(
                "drive-aio",
                (*p, "aio"),
                'direct = true with aio = "off" is rejected by StratoVirt (low performance)',
                'use aio = "native" or "io_uring", or set direct = false',
            )
        if d.iops is not None and d.iops > MAX_IOPS:
            ctx.add(
                "drive-iops",
                (*p, "iops"),
                f"iops {d.iops} is above the limit {MAX_IOPS}",
                "lower iops",
            )
        if d.serial is not None and len(d.serial.encode()) > MAX_SERIAL:
            ctx.add(
                "drive-serial",
                (*p, "serial"),
                f"serial is {len(d.serial.encode())} bytes; virtio-blk allows {MAX_SERIAL}",
                "shorten the serial",
            )
        if d.num_queues is not None and not 1 <= d.num_queues <= 32:
            ctx.add(
                "drive-queues",
                (*p, "queues"),
                f"queues {d.num_queues} is outside 1-32",
                "use 1 to 32 queues",
            )
        if not (4 <= d.queue_size <= 1024 and _pow2(d.queue_size)):
            ctx.add(
                "queue-size",
                (*p, "queue-size"),
                f"queue-size {d.queue_size} must be a power of two between 4 and 1024",
                "256 is the default",
            )
        if d.bootindex is not None:
            if d.bootindex > 255:
                ctx.add(
                    "bootindex",
                    (*p, "bootindex"),
                    f"bootindex {d.bootindex} is outside 0-255",
                    "use 0-255",
                )
            elif d.bootindex in boot and d.attached:
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
                    ("queues", d.num_queues),
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
        if n.ifname and len(n.ifname.encode()) > MAX_IFNAME:
            ctx.add(
                "net-ifname",
                (*p, "ifname"),
                f"tap name {n.ifname!r} is"
                f" {len(n.ifname.encode())} bytes; Linux allows {MAX_IFNAME}",
                "use a shorter name",
            )
        if n.queues is not None and not 1 <= n.queues <= 16:
            ctx.add(
                "net-queues",
                (*p, "queues"),
                f"queues {n.queues} is outside 1-16 (queue pairs)",
                "use 1 to 16",
            )
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
        if n.mac is not None:
            if not is_mac(n.mac):
                ctx.add(
                    "net-mac",
                    (*p, "mac"),
                    f"mac {n.mac!r} is not six two-digit hex pairs separated by ':'",
                    'write it like "52:54:00:12:34:56"',
                )
            elif n.mac.lower() in macs:
                ctx.warn(
                    "net-mac",
                    (*p, "mac"),
                    f"mac {n.mac} is also used by net {macs[n.mac.lower()]!r}",
                    "give each NIC its own MAC",
                )
            else:
                macs[n.mac.lower()] = n.id
        if not (256 <= n.queue_size <= 4096 and _pow2(n.queue_size)):
            ctx.add(
                "queue-size",
                (*p, "queue-size"),
                f"queue-size {n.queue_size} must be a power of two between 256 and 4096",
                "256 is the default",
            )

"""Machine type, architecture, boot source and firmware rules.

docs/stratovirt.md: "Machine and CPU model", "Boot", "The health check".
"""

from __future__ import annotations

from engine.machine.layout import CMDLINE_MAX_SIZE
from launcher import model as m
from launcher.validate.base import Context

MAX_PARAM = 255
MAX_INITRD = 255
#: the engine writes boot.cmdline as it is, NUL-terminated, into a CMDLINE_MAX_SIZE buffer
#: (engine.machine.bootparams.write_cmdline); Linux's COMMAND_LINE_SIZE is the same 2048
MAX_CMDLINE = CMDLINE_MAX_SIZE - 1


def check(ctx: Context) -> None:
    man = ctx.manifest
    mt = man.machine.type
    if mt is m.MachineType.Q35 and man.arch is not m.Arch.X86_64:
        ctx.add(
            "machine-arch",
            ("machine", "type"),
            "machine type q35 exists only on x86_64",
            'use type = "virt" on aarch64',
        )
    if mt is m.MachineType.VIRT and man.arch is not m.Arch.AARCH64:
        ctx.add(
            "machine-arch",
            ("machine", "type"),
            "machine type virt exists only on aarch64",
            'use type = "q35" on x86_64 (or set arch = "aarch64")',
        )
    if man.machine.usb:
        ctx.add(
            "machine-usb",
            ("machine", "usb"),
            "StratoVirt accepts only usb=off on -machine",
            "remove machine.usb; USB devices go in the [usb] table",
        )
    gic = man.machine.gic_version
    if gic is not None and (man.arch is not m.Arch.AARCH64 or gic != 3):
        ctx.add(
            "gic-version",
            ("machine", "gic-version"),
            f"gic-version {gic} is not supported here: only 3, and only on aarch64",
            "remove gic-version (3 is the default on aarch64)",
        )
    if mt is m.MachineType.NONE:
        if man.drives or man.nets or man.consoles or man.vsock or man.balloon or man.rngs:
            ctx.warn(
                "machine-none-devices",
                ("machine", "type"),
                "machine type none realizes no devices; they are only parsed",
                "use microvm, q35 or virt to run a guest",
            )
        return
    _boot(ctx)
    _firmware(ctx)
    if not ctx.standard and man.fast_unplug is not None:
        ctx.warn(
            "fast-unplug-microvm",
            ("global", "pcie-root-port", "fast-unplug"),
            "fast-unplug only affects root ports of q35/virt machines",
            "remove it on microvm",
        )


def _boot(ctx: Context) -> None:
    man = ctx.manifest
    boot = man.boot
    if ctx.microvm and not boot.kernel:
        ctx.add(
            "kernel-required",
            ("boot", "kernel"),
            "a microvm boots a kernel directly; boot.kernel is missing",
            'add [boot] kernel = "vmlinux"',
        )
    if not boot.initrd and not man.drives and not man.chardevs:
        ctx.add(
            "rootfs-required",
            ("boot",),
            "no root file system: StratoVirt needs an initrd,"
            " a drive or a chardev (vhost-user-blk) before it starts",
            "add boot.initrd or a [drives.rootfs] entry",
        )
    if boot.initrd and len(boot.initrd.encode()) > MAX_INITRD:
        ctx.add(
            "initrd-path-too-long",
            ("boot", "initrd"),
            f"the initrd path is {len(boot.initrd.encode())} bytes; StratoVirt allows {MAX_INITRD}",
            "move the initrd to a shorter path",
        )
    if boot.cmdline and len(boot.cmdline.encode()) > MAX_CMDLINE:
        ctx.add(
            "kernel-cmdline-too-long",
            ("boot", "cmdline"),
            f"the kernel command line is {len(boot.cmdline.encode())} bytes; the guest kernel"
            f" takes at most {MAX_CMDLINE} ({CMDLINE_MAX_SIZE} with its terminating NUL)",
            "shorten boot.cmdline; put long configuration in the initrd or on a disk",
        )
    if boot.cmdline:
        for word in boot.cmdline.split():
            key, eq, value = word.partition("=")
            value = value if eq else word
            kept = value.split("=")[0] if eq else value
            if len(kept.encode()) > MAX_PARAM:
                ctx.add(
                    "kernel-param-too-long",
                    ("boot", "cmdline"),
                    f"kernel parameter {key!r} has a {len(kept.encode())}-byte value;"
                    f" StratoVirt allows {MAX_PARAM}",
                    "shorten the value",
                )
            if eq and "=" in value:
                ctx.warn(
                    "kernel-param-truncated",
                    ("boot", "cmdline"),
                    f"StratoVirt v2.2 keeps only {key}={kept!r} of {word!r} (the text after"
                    " a second '=' is dropped)",
                    "use root=/dev/vda style values without '='",
                )


def _firmware(ctx: Context) -> None:
    man = ctx.manifest
    if not ctx.standard:
        for key, present in (
            ("pflash", man.pflash),
            ("root-ports", man.root_ports),
            ("vfio", man.vfio),
            ("usb", man.usb.xhci or man.usb.keyboard or man.usb.tablet),
        ):
            if present:
                ctx.add(
                    "standard-vm-only",
                    (key,),
                    f"{key} needs a standard VM (q35 or virt), not {man.machine.type.value}",
                    'set machine.type = "q35" (x86_64) or "virt" (aarch64)',
                )
        return
    units: set[int] = set()
    for i, p in enumerate(man.pflash):
        if p.unit not in (0, 1):
            ctx.add(
                "pflash-unit",
                ("pflash", i, "unit"),
                f"pflash unit {p.unit} does not exist; use 0 (firmware code) or 1 (variables)",
                "set unit = 0 or unit = 1",
            )
        elif p.unit in units:
            ctx.add(
                "pflash-unit",
                ("pflash", i, "unit"),
                f"pflash unit {p.unit} is declared twice",
                "give each pflash its own unit",
            )
        units.add(p.unit)
        if p.unit == 0 and not p.readonly:
            ctx.warn(
                "pflash-readonly",
                ("pflash", i, "readonly"),
                "pflash unit 0 holds the firmware code and should be read-only",
                "set readonly = true",
            )
    if man.machine.type is m.MachineType.Q35 and 0 not in units:
        ctx.add(
            "pflash-required",
            ("pflash",) if man.pflash else ("machine", "type"),
            "q35 starts at the firmware reset vector: it needs a pflash unit 0 (OVMF code)"
            " even to boot a kernel",
            'add [[pflash]] unit = 0 file = "OVMF_CODE.fd" readonly = true',
        )

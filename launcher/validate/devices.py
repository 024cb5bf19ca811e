"""vsock, balloon, rng, VFIO, USB and pvpanic rules (docs/stratovirt.md, "Other devices").

Ranges (guest-cid, root port numbers, xhci ports) are declared limits
(``launcher.validate.limits``)."""

from __future__ import annotations

import re

from launcher.validate.base import Context

RATE_MIN, RATE_MAX = 64, 1_000_000_000
PVPANIC_REFUSED = (
    "StratoVirt v2.2 has no pvpanic device: a guest panic would go unreported, so the key is"
    " for the builtin engine only"
)
PVPANIC_HINT = "remove [pvpanic] to run this VM with StratoVirt, or run it with 'svlaunch up'"
_HOST_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$")


def check(ctx: Context) -> None:
    man = ctx.manifest
    for r in man.rngs:
        p = ("rngs", r.id)
        if (r.max_bytes is None) != (r.period is None):
            missing = "period" if r.period is None else "max-bytes"
            ctx.add(
                "rng-rate",
                (*p, missing),
                f"max-bytes and period go together; {missing} is missing",
                f"add {missing} or remove the other",
            )
        elif r.max_bytes is not None and r.period is not None:
            if r.period == 0:
                ctx.add(
                    "rng-rate", (*p, "period"), "period must be above 0 ms", "use period = 1000"
                )
            else:
                rate = r.max_bytes * 1000 // r.period
                if not RATE_MIN <= rate <= RATE_MAX:
                    ctx.add(
                        "rng-rate",
                        (*p, "max-bytes"),
                        f"rate {rate} bytes/s"
                        f" (max-bytes*1000/period) is outside {RATE_MIN}-{RATE_MAX}",
                        "adjust max-bytes or period",
                    )
    if man.balloon is not None and man.vfio:
        ctx.warn(
            "balloon-vfio",
            ("balloon",),
            "a balloon with VFIO devices can corrupt DMA into reclaimed pages",
            "remove the balloon when passing devices through",
        )
    for v in man.vfio:
        p = ("vfio", v.id)
        if (v.host is None) == (v.sysfsdev is None):
            ctx.add(
                "vfio-host", p, "give exactly one of host or sysfsdev", 'e.g. host = "0000:1a:00.3"'
            )
        elif v.host is not None and not _HOST_RE.match(v.host):
            ctx.add(
                "vfio-host",
                (*p, "host"),
                f"host {v.host!r} is not a PCI address DDDD:BB:DD.F",
                'write it like "0000:1a:00.3" (see lspci -D)',
            )
    if man.pvpanic is not None and ctx.target == "stratovirt":
        ctx.add("pvpanic-stratovirt", ("pvpanic",), PVPANIC_REFUSED, PVPANIC_HINT)
    x = man.usb.xhci
    for key, dev in (("keyboard", man.usb.keyboard), ("tablet", man.usb.tablet)):
        if dev is not None and x is None:
            ctx.add(
                "usb-needs-xhci",
                ("usb", key),
                f"a USB {key} needs a controller",
                'add [usb.xhci] addr = "0x<slot>"',
            )

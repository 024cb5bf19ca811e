"""Rules on svlaunch's own keys: where a VM runs (``hosts``), what it waits for (``depends-on``)
and the balloon target svlaunch sets over QMP.

Per manifest only; the rules across manifests (one host's VMs must not share names, MACs,
sockets, disks...) are ``launcher.gitops.inventory``'s.
"""

from __future__ import annotations

import re

from engine.names import VM_NAME_HINT, is_vm_name
from launcher.validate.base import Context

#: a host name as ``hostname`` prints it: dot-separated labels of letters, digits and '-'
HOST_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
MAX_HOST_NAME = 253


def is_host_name(name: str) -> bool:
    return len(name) <= MAX_HOST_NAME and HOST_NAME.fullmatch(name) is not None


def check(ctx: Context) -> None:
    man = ctx.manifest
    seen: set[str] = set()
    for i, host in enumerate(man.hosts):
        if not is_host_name(host):
            ctx.add(
                "hosts-entry",
                ("hosts", i),
                f"{host!r} is not a host name",
                "letters, digits and '-' in dot-separated labels, as 'hostname' prints them",
            )
        elif host in seen:
            ctx.warn("hosts-entry", ("hosts", i), f"host {host!r} is listed twice")
        seen.add(host)
    wanted: set[str] = set()
    for i, dep in enumerate(man.depends_on):
        if not is_vm_name(dep):
            ctx.add("depends-on", ("depends-on", i), f"{dep!r} is not a VM name", VM_NAME_HINT)
        elif dep == man.name:
            ctx.add("depends-on", ("depends-on", i), "a VM cannot depend on itself")
        elif dep in wanted:
            ctx.warn("depends-on", ("depends-on", i), f"{dep!r} is listed twice")
        wanted.add(dep)
    balloon = man.balloon
    if balloon is not None and balloon.target is not None:
        if balloon.target > man.memory.size:
            ctx.add(
                "balloon-target",
                ("balloon", "target"),
                f"the balloon target ({balloon.target >> 20} MiB) is more than the guest's"
                f" memory ({man.memory.size >> 20} MiB)",
                "the target is what the guest keeps: at most memory.size",
            )
        elif ctx.target == "stratovirt":
            ctx.warn(
                "balloon-target",
                ("balloon", "target"),
                "StratoVirt's command line has no balloon target: svlaunch sets it over QMP",
                "set it with: svlaunch qmp NAME balloon value=BYTES (or run the VM with svlaunch)",
            )

"""Small sandboxed plans for the ozone tests: files in a temp dir, a jail root, a QMP socket."""

from __future__ import annotations

import os

from engine.ozone.sandbox import Sandbox
from engine.plan import (
    BlkPlan,
    BootPlan,
    HostFile,
    MemoryPlan,
    NetPlan,
    Plan,
    RamRange,
    SandboxPlan,
    TopologyPlan,
    VcpuPlan,
)

UID = 1000
HAVE_KVM = os.path.exists("/dev/kvm")


def make_plan(
    d: str, *, sandbox: dict | None = None, nets: int = 0, drive_owner: int = UID, **kw
) -> Plan:
    """A small plan whose files live in ``d`` (kernel, a writable drive, a QMP socket dir)."""
    os.makedirs(d, exist_ok=True)
    kernel = os.path.join(d, "vmlinux")
    drive = os.path.join(d, "disk.img")
    with open(kernel, "wb") as f:
        f.write(b"kernel")
    with open(drive, "wb") as f:
        f.write(bytes(4096))
    os.chmod(drive, 0o600)
    if os.geteuid() == 0:
        os.chown(drive, drive_owner, drive_owner)
    qmp = os.path.join(d, "run", "qmp.sock")
    devices = [BlkPlan(id="d0", mmio_base=0xD0000000, irq=5, file=drive)]
    devices += [
        NetPlan(id=f"n{i}", mmio_base=0xD0001000, irq=6, ifname="tap0") for i in range(nets)
    ]
    sb = dict(
        name="vm1", exec_file="/usr/bin/stratovirt", uid=UID, gid=UID, root=os.path.join(d, "srv")
    )
    sb.update(sandbox or {})
    return Plan(
        name="vm1", arch="x86_64", machine="microvm",
        topology=TopologyPlan(1, 1, 1, 1, 1, 1, 1), vcpus=(VcpuPlan(0, 0, 0, 0, 0, 0, 0),),
        memory=MemoryPlan(size=128 << 20, ranges=(RamRange(0, 128 << 20),), mmio_hole=(0xC0000000, 1 << 30)),
        boot=BootPlan(kernel=kernel), devices=tuple(devices), qmp=(qmp,),
        sandbox=SandboxPlan(**sb),
        host_files=(HostFile(kernel, "kernel"), HostFile(drive, "drive", True), HostFile(qmp, "qmp", True)),
        **kw,
    )  # fmt: skip


def realize_piped(sb: Sandbox, argv: list[str]):
    """Start ``argv`` jailed with its stdin/stdout on pipes: (jailed, stdin writer, stdout)."""
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    saved = os.dup(0), os.dup(1)
    os.dup2(r, 0)
    os.dup2(out_w, 1)
    try:
        jailed = sb.realize(argv)
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (r, out_w, *saved):
            os.close(fd)
    return jailed, w, os.fdopen(out_r)

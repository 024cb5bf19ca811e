"""vCPU rules: StratoVirt's -smp resolution (delegated to ``launcher.compile.topology``)."""

from __future__ import annotations

from launcher import model as m
from launcher.compile.topology import resolve_topology
from launcher.validate.base import Context


def topology(man: m.Manifest) -> m.Topology | None:
    try:
        return resolve_topology(man.cpu)
    except ValueError:
        return None


def check(ctx: Context) -> None:
    man = ctx.manifest
    try:
        resolve_topology(man.cpu)
    except ValueError as exc:
        key = getattr(exc, "field", "cpus")
        hint = getattr(exc, "hint", "") or "see docs/manifest.md#cpu for how factors are derived"
        ctx.add("cpu-topology", ("cpu", key), str(exc), hint)
    if man.cpu.pmu and man.arch is not m.Arch.AARCH64:
        ctx.warn(
            "cpu-pmu",
            ("cpu", "pmu"),
            "pmu only has an effect on aarch64",
            "remove cpu.pmu on x86_64",
        )
    if (
        man.arch is m.Arch.AARCH64
        and ctx.microvm
        and man.cpu.sockets is not None
        and man.cpu.sockets != 1
    ):
        ctx.warn(
            "cpu-sockets-aarch64-microvm",
            ("cpu", "sockets"),
            f"the guidebook requires one socket on an aarch64 microvm, got {man.cpu.sockets}",
            "set sockets = 1",
        )

"""print the engine plan (JSON) of a manifest

The plan is what `svlaunch up` hands to the engine: guest memory map (RAM ranges, the 32-bit MMIO
hole, NUMA ranges and host bindings), vCPUs (APIC id, package/die/cluster/core/thread, node),
devices (kind, backend, MMIO window, IRQ), boot, QMP, sandbox, and the host files the VM uses.

examples:
  svlaunch plan examples/quickstart.toml
  svlaunch plan vm.toml | jq '.devices[] | {kind, id, mmio_base, irq}'
  svlaunch plan vm.toml -o /tmp/vm.plan.json
"""

from __future__ import annotations

import argparse

from launcher.commands import write_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest file (.toml, .yaml, .yml)")
    parser.add_argument("-o", "--output", help="write the plan to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    from launcher.compile.engine_plan import compile_plan
    from launcher.manifest import load_manifest

    plan = compile_plan(load_manifest(args.manifest))
    text = plan.dumps() + "\n"
    write_output(text, args.output)
    return 0

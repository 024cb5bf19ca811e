"""write systemd units: the GitOps agent's, and a template for single VMs

'svlaunch export systemd SOURCE' writes svlaunch-agent.service (the agent for SOURCE, with
KillMode=process so that the VMs outlive it, and hardening that leaves the engine /dev/kvm,
taps and cgroups) and svlaunch@.service (svlaunch@NAME runs VMDIR/NAME.toml in the foreground).
Into -o DIR, or to stdout. docs/gitops.md.

examples:
  svlaunch export systemd https://git.example.com/vms.git#main -o /etc/systemd/system
  systemctl daemon-reload && systemctl enable --now svlaunch-agent
  svlaunch export systemd /srv/vms.git#prod --host web-01 --interval 1m --prune -o units/
  systemctl enable --now svlaunch@web1       # with --vm-dir /etc/svlaunch/vms: web1.toml
"""

from __future__ import annotations

import argparse
import os

from launcher.errors import EXIT_OK, HostError, UsageError

AGENT_UNIT = "svlaunch-agent.service"
VM_UNIT = "svlaunch@.service"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("systemd",), help="what to export")
    p.add_argument("source", metavar="SOURCE", help="the agent's source (folder or URL[#REF])")
    p.add_argument("--host", metavar="NAME", help="the agent's --host (default: the hostname)")
    p.add_argument("--interval", default="30s", help="the agent's --interval (30s)")
    p.add_argument("--prune", action="store_true", help="the agent destroys removed VMs")
    p.add_argument(
        "--vm-dir",
        default="/etc/svlaunch/vms",
        metavar="DIR",
        help="where svlaunch@NAME finds NAME.toml (/etc/svlaunch/vms)",
    )
    p.add_argument("-o", "--output", metavar="DIR", help="write the unit files into DIR")


def run(args: argparse.Namespace) -> int:
    from launcher.commands.agent import duration
    from launcher.gitops.session import host_name
    from launcher.gitops.source import SourceError, parse_source
    from launcher.gitops.systemd import agent_unit, vm_unit

    try:  # a local source is written as an absolute path (the agent runs elsewhere: '/')
        spec = parse_source(args.source)
        source = spec.location if spec.kind == "folder" else str(spec)
    except SourceError:  # not on this machine: the host that runs the agent has it
        source = args.source
        if not os.path.isabs(source.partition("#")[0]):
            raise

    try:
        duration(args.interval)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from None
    host = host_name(args.host) if args.host else None
    if not os.path.isabs(args.vm_dir) or any(not c.isprintable() for c in args.vm_dir):
        raise UsageError("--vm-dir must be an absolute path")
    units = {
        AGENT_UNIT: agent_unit(source, host, args.interval, args.prune),
        VM_UNIT: vm_unit(args.vm_dir),
    }
    if not args.output:
        for name, text in units.items():
            print(f"# --- {name} ---\n{text}")
        return EXIT_OK
    for name, text in units.items():
        path = os.path.join(args.output, name)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise HostError(f"cannot write {path}: {exc.strerror}") from None
        print(f"wrote {path}")
    return EXIT_OK

"""list VMs on this host

Each row: name, state (asked over QMP of the VM's own engine; "unresponsive" when QMP does not
answer, "impostor" when another process serves its socket), the engine's pid, the sandbox
supervisor's pid (sandboxed VMs: the unconfined process svlaunch started), vCPUs, memory,
uptime, how the name's last run ended (its exit record: guest-shutdown, guest-panic...,
docs/lifecycle.md), and for VMs that 'svlaunch apply' or the agent started the source revision
they run and whether they drifted from it (paused, other disks, a change still owed). State left
behind by crashed engines is cleaned up on the way; -a also lists VMs that have stopped.

examples:
  svlaunch ps
  svlaunch ps -a
  svlaunch ps --json | jq '.[] | select(.state == "paused") | .name'
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.add_argument(
        "-a", "--all", action="store_true", help="also list stopped VMs (state 'stopped')"
    )


def vm_state(meta: Any) -> str:
    """The VM's run state, asked of its own engine; "unresponsive" when it does not answer,
    "not its engine" when something else serves its QMP socket."""
    return _ask(meta)[0]


def _ask(meta: Any) -> tuple[str, dict[str, str] | None]:
    """The run state and the disks (device id -> file) of the VM's own engine."""
    from launcher.errors import SvlaunchError
    from launcher.identity import NotTheVm, connect

    try:
        with connect(meta, timeout=1.0) as c:
            state = str(c.execute("query-status").get("status", "unknown"))
            blocks = c.try_execute("query-block")
    except NotTheVm:
        return "impostor", None
    except SvlaunchError:
        return "unresponsive", None
    if not isinstance(blocks, list):
        return state, None
    return state, {
        str(b.get("qdev")): str((b.get("inserted") or {}).get("file", ""))
        for b in blocks
        if isinstance(b, dict) and b.get("qdev")
    }


def rows(stopped: bool = False) -> list[dict[str, Any]]:
    from launcher import runtime
    from launcher.gitops.fleet import agent_rows, gitops_columns
    from launcher.runtime_ended import last_record, stopped_vms

    out: list[dict[str, Any]] = []
    agent = agent_rows()
    vms = runtime.all_vms()
    for vm in vms:
        meta = vm.meta()
        if meta is None:
            out.append({"name": vm.name, "state": "starting", "pid": None})
            continue
        state, blk = _ask(meta)
        out.append(
            {
                "name": meta.name,
                "state": state,
                "pid": meta.engine_pid or meta.pid,
                "supervisor_pid": meta.supervisor_pid,
                "vcpus": meta.vcpus,
                "memory": meta.memory,
                "started": meta.started,
                "uptime": runtime.uptime_text(meta.started),
                "qmp": meta.qmp,
                "serial": meta.serial,
                "ended": last_record(vm),
                **gitops_columns(vm, state, blk, agent),
            }
        )
    if stopped:
        for vm in stopped_vms(vms):
            out.append({"name": vm.name, "state": "stopped", "ended": last_record(vm)})
    return sorted(out, key=lambda r: r["name"])


def run(args: argparse.Namespace) -> int:
    from launcher.runtime_ended import ended_text

    table = rows(stopped=args.all)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    from launcher.report import shown

    header = (
        "NAME",
        "STATE",
        "PID",
        "SUPERVISOR",
        "VCPUS",
        "MEMORY",
        "UPTIME",
        "ENDED",
        "REVISION",
        "DRIFT",
    )
    lines = [header]
    for r in table:
        mem = f"{r.get('memory', 0) >> 20}M" if r.get("memory") else "-"
        lines.append(
            (
                r["name"],
                r["state"],
                str(r.get("pid") or "-"),
                str(r.get("supervisor_pid") or "-"),
                str(r.get("vcpus") or "-"),
                mem,
                r.get("uptime", "-"),
                ended_text(r.get("ended")),
                r.get("revision") or "-",
                shown(_drift_text(r.get("drift"))),
            )
        )
    from launcher.report import shown

    # Names and paths come from folders and records anyone with write access could shape.
    cells = [[shown(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _drift_text(drift: str | None) -> str:
    """ "-" for a VM svlaunch apply does not manage, "no" when it runs as applied."""
    if drift is None:
        return "-"
    return drift or "no"

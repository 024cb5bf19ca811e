"""show one VM's state

State, pid, uptime, QMP and console sockets, vCPUs (with their host thread ids) and memory
(balloon included when there is one), all asked over QMP, and how the name's last run ended.
A VM that has stopped shows state "stopped" and its exit record (cause, exit code, reason:
docs/lifecycle.md) for as long as the runtime folder keeps it (until the name runs again).

examples:
  svlaunch status web1
  svlaunch status web1 --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from launcher.report import shown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="VM name (see 'svlaunch ps')")
    parser.add_argument("--json", action="store_true", help="print JSON")


def collect(name: str) -> dict[str, Any]:
    from launcher import runtime
    from launcher.errors import HostError
    from launcher.identity import connect
    from launcher.runtime_ended import last_record

    try:
        vm = runtime.find(name)
    except HostError:
        gone = runtime.vm_dir(name)
        ended = last_record(gone)
        if ended is None:
            raise
        log = str(gone.last_log) if gone.last_log.is_file() else None
        return {"name": name, "state": "stopped", "ended": ended, "log": log}
    meta = vm.meta()
    info: dict[str, Any] = {"name": name, "runtime_dir": str(vm.path)}
    if meta is None:
        info["state"] = "starting"
        return info
    info.update(
        pid=meta.engine_pid or meta.pid,
        supervisor_pid=meta.supervisor_pid,
        uptime=runtime.uptime_text(meta.started),
        qmp=meta.qmp,
        serial=meta.serial,
        manifest=meta.manifest,
        memory=meta.memory,
        log=str(vm.log_file) if vm.log_file.exists() else None,
        ended=last_record(vm),  # the previous run of this name, if any
    )
    with connect(meta, timeout=3.0) as c:
        info["state"] = c.execute("query-status").get("status")
        cpus = c.try_execute("query-cpus") or c.try_execute("query-cpus-fast") or []
        info["vcpus"] = [
            {"cpu": x.get("CPU", x.get("cpu-index")), "thread_id": x.get("thread_id")} for x in cpus
        ]
        balloon = c.try_execute("query-balloon")
        info["balloon"] = balloon.get("actual") if isinstance(balloon, dict) else None
    return info


def run(args: argparse.Namespace) -> int:
    info = collect(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "vcpus":
            value = ", ".join(f"{v['cpu']}(tid {v['thread_id']})" for v in value) or "-"
        elif key in ("memory", "balloon") and isinstance(value, int):
            value = f"{value >> 20} MiB"
        elif key == "ended":
            value = _ended_line(value)
        print(f"{key.ljust(width)}  {shown(str(value)) if value is not None else '-'}")
    return 0


def _ended_line(rec: dict[str, Any] | None) -> str | None:
    """``guest-panic (exit code 7): the guest panicked, at 2026-12-06 21:30:12``."""
    if rec is None:
        return None
    import time

    from launcher.runtime_ended import ended_text

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["ended"]))
    return f"{ended_text(rec)}: {shown(rec['reason'])}, at {when}"

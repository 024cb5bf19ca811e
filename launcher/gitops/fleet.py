"""What ``ps`` and the fleet view add for each VM: the revision it runs and whether it drifted.

Known without the source: a VM svlaunch apply started carries its GitOps record
(``launcher.gitops.state``), so the revision and path it runs are read there, and it has
drifted when it is paused though its manifest says it runs, or its disks differ from what was
applied. The agent's last look (``.gitops/agent.json``) adds what only the source knows: a
change it still owes (a restart held back by ``update = "manual"``, a back-off).
"""

from __future__ import annotations

from typing import Any

from launcher.gitops.state import VmRecord, read_record


def agent_rows() -> dict[str, dict[str, Any]]:
    """The running agent's last per-VM rows (empty when no agent ran here)."""
    from launcher.gitops.agent import read_status

    data = read_status() or {}
    vms = data.get("vms")
    return vms if isinstance(vms, dict) else {}


def gitops_columns(
    vm: Any, state: str, blk: dict[str, str] | None, agent: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``revision``, ``source`` (the manifest's path in it) and ``drift`` ("" when none, None
    when svlaunch apply does not manage the VM) of one live VM."""
    record: VmRecord | None = read_record(vm)
    if record is None:
        return {"revision": None, "path": None, "drift": None}
    rev = record.revision
    short = rev if rev.startswith("folder:") else rev[:12]
    drift = ""
    if state in ("paused", "prelaunch") and not record.paused:
        drift = f"{state}, its manifest says it runs"
    elif blk is not None and record.devices.get("blk") not in (None, blk):
        drift = "disks differ from what was applied"
    else:
        row = agent.get(vm.name) or {}
        if row.get("action") not in (None, "unchanged"):
            drift = f"{row['action']} pending" + (f" ({row['skip']})" if row.get("skip") else "")
    return {"revision": short, "path": record.path, "drift": drift}

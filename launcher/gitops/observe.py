"""What runs on this host now, as the diff needs it: which VMs are alive, in what run state,
started from which plan, with which disks, and how a dead one ended.

Liveness is the runtime lock (``launcher.runtime``); run state and disks are asked over QMP of
the VM's own engine only (``launcher.identity.connect``: an impostor is reported, never
trusted), many VMs at a time. Nothing here changes anything.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from launcher.gitops.state import VmRecord, read_record

QMP_TIMEOUT = 10.0
WORKERS = 16


@dataclass
class Running:
    """A live VM of this host's runtime root."""

    name: str
    meta: Any  # launcher.runtime.Meta (None while it is starting)
    record: VmRecord | None  # its GitOps record
    plan_sha: str = ""  # of the plan.json it was started with
    state: str = "unknown"  # QMP run state, "unresponsive" or "impostor"
    blk: dict[str, str] | None = None  # device id -> file, from query-block (None: not asked)
    balloon: int | None = None  # query-balloon's actual

    @property
    def engine(self) -> dict[str, Any]:
        m = self.meta
        if m is None:
            return {}
        return {"pid": m.engine_pid or m.pid, "start": m.engine_start or m.pid_start}


@dataclass
class Observed:
    """Every live VM by name, and the exit records of VM folders whose engine has ended."""

    running: dict[str, Running] = field(default_factory=dict)
    exits: dict[str, dict[str, Any]] = field(default_factory=dict)


def observe(ask: bool = True, clean: bool = False) -> Observed:
    """The host's VMs; with ``ask``, each live VM is asked for its run state and disks. The
    folders of VMs whose engine ended give their exit records; with ``clean`` they are then
    removed (as ``ps`` does): the caller keeps the record (the host state's ``last_exit``)."""
    out = Observed()
    for vm in _all_with_exits(out, clean):
        meta = vm.meta()
        raw = vm.read("plan.json")
        out.running[vm.name] = Running(
            vm.name,
            meta,
            read_record(vm),
            hashlib.sha256(raw).hexdigest() if raw is not None else "",
        )
    if ask and out.running:
        with ThreadPoolExecutor(min(WORKERS, len(out.running))) as pool:
            list(pool.map(_ask, out.running.values()))
    return out


def _all_with_exits(out: Observed, clean: bool) -> list[Any]:
    from launcher import runtime

    live = runtime.all_vms(clean=False)
    for vm in _dead_folders(runtime, {v.name for v in live}):
        rec = vm.exit_record()
        out.exits[vm.name] = rec if rec is not None else {"reason": "unrecorded"}
        if clean:
            vm.remove()
    return live


def _dead_folders(runtime: Any, live: set[str]) -> list[Any]:
    import os

    from engine.names import is_vm_name
    from launcher.errors import HostError

    root = runtime.open_root(create=False)
    if root is None:
        return []
    found = []
    try:
        for name in sorted(os.listdir(root)):
            if name in live or not is_vm_name(name):
                continue
            try:
                runtime.trust(os.lstat(name, dir_fd=root), name, "runtime entry")
            except (OSError, HostError):
                continue
            vm = runtime.VmDir(name, runtime.runtime_root() / name)
            if not vm.alive() and vm.record() is not None:
                found.append(vm)
    finally:
        os.close(root)
    return found


def _ask(r: Running) -> None:
    from launcher.errors import SvlaunchError
    from launcher.identity import NotTheVm, connect

    if r.meta is None:
        r.state = "starting"
        return
    try:
        with connect(r.meta, timeout=QMP_TIMEOUT) as c:
            r.state = str(c.execute("query-status").get("status", "unknown"))
            blocks = c.try_execute("query-block")
            if isinstance(blocks, list):
                r.blk = {
                    str(b.get("qdev")): str((b.get("inserted") or {}).get("file", ""))
                    for b in blocks
                    if isinstance(b, dict) and b.get("qdev")
                }
            bal = c.try_execute("query-balloon")
            if isinstance(bal, dict) and isinstance(bal.get("actual"), int):
                r.balloon = bal["actual"]
    except NotTheVm:
        r.state = "impostor"
    except SvlaunchError:
        r.state = "unresponsive"


def failed(exit_record: dict[str, Any] | None) -> bool:
    """Whether a VM's end counts as a failure for ``restart = "on-failure"``.

    Until the engine names how a guest ended (poweroff, reset, triple fault, panic) in its exit
    record, anything but a clean exit with status 0 is a failure, and so is an end nobody
    recorded (an engine killed by SIGKILL, or one exec'd without an exit file).
    """
    if not exit_record or exit_record.get("reason") == "unrecorded":
        return True
    if exit_record.get("signal") or exit_record.get("code") != 0:
        return True
    reason = str(exit_record.get("reason", ""))
    return any(word in reason for word in ("panic", "fault", "crash", "error", "killed"))

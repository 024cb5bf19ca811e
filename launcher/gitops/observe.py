"""What runs on this host now, as the diff needs it: which VMs are alive, in what run state,
started from which plan, with which disks, and how a dead one ended.

Liveness is the runtime lock (``launcher.runtime``); run state and disks are asked over QMP of
the VM's own engine only (``launcher.identity.connect``: an impostor is reported, never
trusted), many VMs at a time. Nothing here changes anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from launcher.gitops.state import RECORD_FILE, VmRecord

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
    from launcher.gitops.state import VmRecord
    from launcher.runtime import Meta

    out = Observed()
    for name, files in _read_folders(_all_with_exits(out, clean)).items():
        meta, plan, rec = (files.get(f) for f in ("meta.json", "plan.json", RECORD_FILE))
        out.running[name] = Running(
            name,
            Meta.from_json(_json(meta)),
            VmRecord.from_json(_json(rec)),
            hashlib.sha256(plan).hexdigest() if plan is not None else "",
        )
    if ask and out.running:
        with ThreadPoolExecutor(min(WORKERS, len(out.running))) as pool:
            list(pool.map(_ask, out.running.values()))
    return out


def _json(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def _read_folders(vms: list[Any]) -> dict[str, dict[str, bytes]]:
    """The state files of each VM's folder: the root opened once, each folder once (checked
    as ``VmDir.opened`` does), each file relative to it, never through a symlink."""
    from launcher.errors import HostError
    from launcher.runtime import open_dir, open_root, read_at

    out: dict[str, dict[str, bytes]] = {}
    root = open_root(create=False)
    if root is None:
        return out
    try:
        for vm in vms:
            files: dict[str, bytes] = {}
            try:
                d = open_dir(vm.name, "runtime entry", dir_fd=root, shown=vm.path)
            except (OSError, HostError):
                continue
            try:
                for name in ("meta.json", "plan.json", RECORD_FILE):
                    raw = read_at(d, name)
                    if raw is not None:
                        files[name] = raw
            finally:
                os.close(d)
            out[vm.name] = files
    finally:
        os.close(root)
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
    """Run state and disks, in one pipelined exchange with the VM's own engine: the listener
    must be the recorded engine (``SO_PEERCRED``) and ``query-name`` must give its name, as
    ``launcher.identity.connect`` checks; else the VM is reported as an ``impostor``."""
    from engine.ownfiles import peer_pid
    from launcher.errors import SvlaunchError
    from launcher.qmpclient import QmpClient

    if r.meta is None:
        r.state = "starting"
        return
    try:
        with QmpClient.connect(r.meta.qmp, timeout=QMP_TIMEOUT) as c:
            if peer_pid(c.sock) != (r.meta.engine_pid or r.meta.pid):
                r.state = "impostor"
                return
            name, status, blocks = c.pipeline(
                [("query-name", {}), ("query-status", {}), ("query-block", {})]
            )
    except SvlaunchError:
        r.state = "unresponsive"
        return
    if not isinstance(name, dict) or name.get("name") != r.name:
        r.state = "impostor"
        return
    r.state = str(status.get("status", "unknown")) if isinstance(status, dict) else "unknown"
    if isinstance(blocks, list):
        r.blk = {
            str(b.get("qdev")): str((b.get("inserted") or {}).get("file", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("qdev")
        }


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

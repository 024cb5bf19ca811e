"""The diff: for each VM of this host, what ``svlaunch apply`` would do, and why, per field.

Actions:

- ``create``: the source gives this host a VM that svlaunch never ran here;
- ``destroy``: svlaunch created the VM from this source and it is in no manifest for this host
  any more (only with ``--prune``; without it the VM is an ``orphan``, left alone);
- ``update-live``: every change reaches the running VM without a restart (QMP, or svlaunch's
  own keys: hosts, policy);
- ``restart``: some change takes effect only when the VM starts again (memory, topology...);
- ``drift``: the VM is not as applied: dead, paused though its manifest says it runs, or its
  disks differ from what was applied;
- ``unchanged``.

``orphan`` and ``unmanaged`` (running VMs svlaunch did not create and no manifest names) are
listed but never touched. Which fields changed and how each applies comes from the key
declarations (``launcher.model_diff``). A row whose policy forbids the fix (``update =
"manual"``, ``restart = "never"``) says so in ``skip`` and is not a change.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from launcher.gitops.desired import Desired, Wanted, model_value
from launcher.gitops.observe import Observed, Running, failed
from launcher.gitops.state import HostState, VmState

PLAN_VERSION = 1
CHANGING = ("create", "destroy", "update-live", "restart", "drift")
ACTIONS = (*CHANGING, "unchanged", "orphan", "unmanaged")


@dataclass
class FieldChange:
    key: str
    old: Any
    new: Any
    apply: str  # "restart", "live: ...", "none"


@dataclass
class Row:
    """One VM's line of the diff. ``fix``: what apply does (start, stop, restart, live, cont,
    record, forget, none); ``skip``: why it will not (policy), "" when it will."""

    name: str
    action: str
    reason: str = ""
    fix: str = "none"
    skip: str = ""
    path: str = ""
    depends_on: list[str] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)

    @property
    def is_change(self) -> bool:
        return self.action in CHANGING and not self.skip


@dataclass
class Plan:
    host: str
    source: str
    revision: str
    prune: bool
    rows: list[Row]
    fingerprint: str = ""
    made: float = 0.0
    elsewhere: int = 0  # manifests for other hosts

    @property
    def changes(self) -> list[Row]:
        return [r for r in self.rows if r.is_change]

    def to_json(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise ValueError(f"not a version {PLAN_VERSION} plan")
        rows = [
            Row(**{**r, "changes": [FieldChange(**c) for c in r.get("changes", [])]})
            for r in data["rows"]
        ]
        return cls(
            str(data["host"]), str(data["source"]), str(data["revision"]), bool(data["prune"]),
            rows, str(data["fingerprint"]), float(data["made"]), int(data.get("elsewhere", 0)),
        )  # fmt: skip


def make_plan(desired: Desired, state: HostState, observed: Observed, prune: bool) -> Plan:
    """The diff of this host against ``desired`` (``desired.errors`` must be 0)."""
    spec = desired.snapshot.spec
    names = set(desired.vms) | set(observed.running)
    names |= {n for n, v in state.vms.items() if v.source == spec.text}
    rows: list[Row] = []
    for name in sorted(names):
        row = _row(
            name, desired, state.vms.get(name), observed.running.get(name),
            observed.exits.get(name), spec.text, prune,
        )  # fmt: skip
        if row is not None:
            rows.append(row)
    plan = Plan(
        state.host, spec.text, desired.snapshot.revision, prune, rows,
        made=time.time(), elsewhere=desired.elsewhere,
    )  # fmt: skip
    plan.fingerprint = fingerprint(plan, state, observed)
    return plan


def fingerprint(plan: Plan, state: HostState, observed: Observed) -> str:
    """What the plan was made from: host, source, revision, each row, and what was seen of each
    VM (its engine, run state, record, state entry). A saved plan is applied only while this
    is unchanged."""
    seen = {
        name: {
            "engine": r.engine,
            "state": r.state,
            "record": r.record.model_hash if r.record else None,
        }
        for name, r in observed.running.items()
    }
    entries = {n: [v.model_hash, v.pending, v.created] for n, v in state.vms.items()}
    rows = [[r.name, r.action, r.fix, r.skip, [c.key for c in r.changes]] for r in plan.rows]
    data = [plan.host, plan.source, plan.revision, plan.prune, rows, seen, entries]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _row(
    name: str, desired: Desired, st: VmState | None, run: Running | None,
    exit_record: dict[str, Any] | None, source: str, prune: bool,
) -> Row | None:  # fmt: skip
    w = desired.vms.get(name)
    if w is None:
        return _not_wanted(name, st, run, source, prune)
    row = Row(name, "unchanged", path=w.entry.path, depends_on=w.depends_on)
    if run is None:
        return _dead(row, w, st, exit_record)
    if run.state in ("impostor", "unresponsive", "starting"):
        row.action, row.reason = "drift", f"its QMP is {run.state}"
        row.skip = "svlaunch cannot tell what it runs: see 'svlaunch status " + name + "'"
        return row
    rec = run.record
    if rec is None:
        return _adopted(row, w, run, desired)
    if rec.model_hash == w.model_hash:
        return _drift(row, w, run)
    from launcher.manifest.load import load_text_full
    from launcher.model_diff import diff

    old = load_text_full(rec.text, rec.format, rec.path, rec.base_dir).manifest
    if old is None:  # a record of an older svlaunch whose manifest no longer loads
        row.changes = [FieldChange("(manifest)", rec.revision[:12], w.model_hash[:12], "restart")]
        return _classify(row, w, restarts=True, live=False)
    changes = diff(old, desired.manifest(name))
    row.changes = [
        FieldChange(c.path, model_value(c.old), model_value(c.new), str(c.apply)) for c in changes
    ]
    if not changes:  # equal models, different hashes: an older svlaunch's normalization
        row.fix = "record"
        return row
    return _classify(
        row, w, restarts=any(c.apply.restarts for c in changes), live=any(c.live for c in changes)
    )


def _classify(row: Row, w: Wanted, *, restarts: bool, live: bool) -> Row:
    """restart or update-live, as the changes and the VM's update mode say."""
    update = w.facts["update"]
    if not restarts and not live:  # svlaunch's own keys only
        row.action, row.fix, row.reason = "update-live", "record", "svlaunch's own keys changed"
        return row
    if restarts or update == "restart":
        row.action, row.fix = "restart", "restart"
        row.reason = "a change needs a restart" if restarts else "update = restart"
    else:
        row.action, row.fix, row.reason = "update-live", "live", "every change applies live"
    if update == "manual":
        row.skip = "update = manual: apply leaves it; restart it yourself, or change update"
    return row


def _dead(row: Row, w: Wanted, st: VmState | None, exit_record: dict[str, Any] | None) -> Row:
    if st is None:
        row.action, row.fix, row.reason = "create", "start", "new on this host"
        return row
    row.action, row.fix = "drift", "start"
    ended = exit_record or st.last_exit
    if st.pending:
        row.reason = "not running: svlaunch stopped it to restart it, or its start failed"
        return row
    how = _ended_text(ended)
    row.reason = f"not running ({how})"
    policy = w.facts["restart"]
    if policy == "never":
        row.skip = "restart = never: apply leaves it stopped"
    elif policy == "on-failure" and not failed(ended):
        row.skip = "restart = on-failure and it ended cleanly: apply leaves it stopped"
    return row


def _ended_text(rec: dict[str, Any] | None) -> str:
    if not rec or rec.get("reason") == "unrecorded":
        return "its end was not recorded"
    if rec.get("signal"):
        return f"killed by signal {rec['signal']}"
    words = [f"exit {rec.get('code')}"]
    if rec.get("reason"):
        words.append(str(rec["reason"]))
    return ", ".join(words)


def _drift(row: Row, w: Wanted, run: Running) -> Row:
    rec = run.record
    assert rec is not None
    if run.state in ("paused", "prelaunch") and not w.facts["paused"]:
        row.action, row.fix = "drift", "cont"
        row.reason = f"{run.state}, but its manifest says it runs"
        return row
    want = rec.devices.get("blk")
    if want is not None and run.blk is not None and run.blk != want:
        row.action, row.fix = "drift", "restart"
        row.reason = "its disks differ from what was applied"
        row.changes = [
            FieldChange(f"(disk {d})", run.blk.get(d), want.get(d), "restart")
            for d in sorted(set(want) | set(run.blk))
            if run.blk.get(d) != want.get(d)
        ]
        if w.facts["update"] == "manual":
            row.skip = "update = manual: apply leaves it"
        return row
    return row


def _adopted(row: Row, w: Wanted, run: Running, desired: Desired) -> Row:
    """A running VM svlaunch apply did not start (no record): unchanged when it runs the plan
    this manifest gives, else a restart (per its update mode)."""
    want = desired_plan(desired.manifest(row.name))
    have = _running_plan(row.name)
    if have is None or want == have:
        row.fix, row.reason = "record", "adopted: it runs this manifest"
        return row
    keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    row.changes = [FieldChange(f"plan.{k}", _short(have.get(k)), _short(want.get(k)), "restart")
                   for k in keys]  # fmt: skip
    row = _classify(row, w, restarts=True, live=False)
    row.reason = "started outside svlaunch apply, and its plan differs"
    return row


def desired_plan(man: Any) -> dict[str, Any]:
    """The engine plan ``svlaunch up -d`` would write for ``man`` (as JSON data)."""
    from launcher import runtime
    from launcher.commands.up import prepare_plan
    from launcher.compile.engine_plan import compile_plan

    vm = runtime.vm_dir(man.name)
    plan = prepare_plan(compile_plan(man), vm, detach=True, paused=man.paused, name=None)
    return dict(json.loads(plan.dumps()))


def _running_plan(name: str) -> dict[str, Any] | None:
    from launcher import runtime

    raw = runtime.vm_dir(name).read("plan.json")
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _short(value: Any) -> Any:
    text = json.dumps(value, sort_keys=True)
    return value if len(text) <= 80 else text[:77] + "..."


def _not_wanted(
    name: str, st: VmState | None, run: Running | None, source: str, prune: bool
) -> Row | None:
    ours = st is not None and st.created and st.source == source
    path = st.path if st else ""
    if ours:
        if prune:
            fix = "stop" if run is not None else "forget"
            return Row(name, "destroy", "in no manifest for this host any more", fix, path=path)
        return Row(
            name, "orphan", "in no manifest for this host; svlaunch created it (--prune"
            " destroys it)", path=path,
        )  # fmt: skip
    if run is not None:
        return Row(name, "unmanaged", "not svlaunch apply's: left alone")
    return None

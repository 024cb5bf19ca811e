"""Carrying a diff out: starts, stops, restarts and live changes, in dependency order, a
bounded number at a time; one VM's failure never stops the others.

A start is ``svlaunch up -d`` of the manifest's file (a process of its own: the same checks,
the engine pool when one serves, its error message as the user would see it); a stop is
``svlaunch down``'s ``stop_vm`` (guest powerdown, then quit, then signals, each only to the
VM's own engine); a restart is both. Live changes are ``launcher.gitops.live``'s; when the
engine refuses one and the VM's update mode is ``live-or-restart``, the VM is restarted.

The host state is written before each step that stops a VM (``pending``: svlaunch owes that VM
a start) and after each step: an apply killed half-way leaves a state the next apply (or the
agent) finishes from, never a VM stopped and forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from launcher.errors import EngineError, SvlaunchError
from launcher.gitops.plan import Row
from launcher.gitops.session import Inputs
from launcher.gitops.state import VmRecord, VmState, save_state, write_record

START_TIMEOUT = 120.0
PARALLEL = 4


@dataclass
class Outcome:
    """What happened to one VM: ``done``, ``failed``, ``skipped`` (a dependency failed) or
    ``left`` (its policy forbids the change)."""

    name: str
    action: str
    result: str
    detail: str = ""


class Applier:
    def __init__(
        self,
        inputs: Inputs,
        *,
        parallel: int = PARALLEL,
        stop_timeout: float = 20.0,
        say: Callable[[dict[str, Any]], None] = lambda event: None,
    ) -> None:
        assert inputs.plan is not None
        self.inputs = inputs
        self.plan = inputs.plan
        self.parallel = max(1, parallel)
        self.stop_timeout = stop_timeout
        self.say = say
        self.lock = threading.Lock()
        self.outcomes: dict[str, Outcome] = {}

    # -- the schedule ---------------------------------------------------------------------------

    def run(self) -> list[Outcome]:
        """Every fix of the plan. ``svlaunch up``'s own lines ("started ...") are not the
        apply's output: standard output is set aside meanwhile (events go to ``say``)."""
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return self._run()

    def _run(self) -> list[Outcome]:
        rows = {r.name: r for r in self.plan.rows}
        for r in self.plan.rows:
            if r.skip and r.action in ("restart", "update-live", "drift"):
                self.outcomes[r.name] = Outcome(r.name, r.action, "left", r.skip)
        work = [r for r in self.plan.rows if not r.skip and r.fix != "none"]
        if any(r.fix in ("start", "restart", "live") for r in work):
            from launcher.gitops.materialize import materialize

            materialize(self.inputs.desired.snapshot)
        stops = [r for r in work if r.fix in ("stop", "forget")]
        rest = [r for r in work if r.fix not in ("stop", "forget")]
        self._run_all(stops, {})
        deps = {r.name: [d for d in r.depends_on if d in rows] for r in rest}
        self._run_all(rest, deps)
        self._finish()
        return [self.outcomes[r.name] for r in self.plan.rows if r.name in self.outcomes]

    def _run_all(self, rows: list[Row], deps: dict[str, list[str]]) -> None:
        """Each row once its dependencies in ``rows`` are done, ``parallel`` at a time."""
        todo = {r.name: r for r in rows}
        running: dict[Future[Outcome], str] = {}
        with ThreadPoolExecutor(self.parallel) as pool:
            while todo or running:
                for name in list(todo):
                    if len(running) >= self.parallel:
                        break
                    waits = [d for d in deps.get(name, []) if d in todo or d in running.values()]
                    failed = [
                        d for d in deps.get(name, [])
                        if d in self.outcomes and self.outcomes[d].result in ("failed", "skipped")
                    ]  # fmt: skip
                    if failed:
                        row = todo.pop(name)
                        self.outcomes[name] = Outcome(
                            name, row.action, "skipped", f"its dependency {failed[0]} failed"
                        )
                        continue
                    if waits:
                        continue
                    row = todo.pop(name)
                    running[pool.submit(self._one, row)] = name
                if not running:
                    if todo:  # only a cycle is left (validation refuses one): run in order
                        deps = {}
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    self.outcomes[name] = fut.result()

    def _one(self, row: Row) -> Outcome:
        self.say({"event": "vm-apply", "vm": row.name, "action": row.action, "fix": row.fix})
        try:
            detail = getattr(self, "_" + row.fix)(row) or ""
            out = Outcome(row.name, row.action, "done", detail)
        except SvlaunchError as exc:
            out = Outcome(row.name, row.action, "failed", exc.message)
        except Exception as exc:  # a bug must not stop the other VMs; it is reported as one
            from launcher.cli import report_internal_error

            report_internal_error(["apply", row.name])
            out = Outcome(row.name, row.action, "failed", f"internal error: {exc!r}")
        self.say({"event": "vm-result", "vm": row.name, "action": row.action,
                  "result": out.result, "detail": out.detail})  # fmt: skip
        return out

    # -- fixes ----------------------------------------------------------------------------------

    def _start(self, row: Row) -> str:
        w = self.inputs.desired.vms[row.name]
        self._update(row.name, pending="start", created=self._created(row.name))
        taps = self._missing_taps(row.name)
        self._up(w.file)
        return self._started(row.name, taps)

    def _restart(self, row: Row) -> str:
        self._update(row.name, pending="start")
        how = self._stop_vm(row.name)
        return f"{how}; " + self._start(row)

    def _stop(self, row: Row) -> str:
        how = self._stop_vm(row.name)
        with self.lock:
            self.inputs.state.vms.pop(row.name, None)
            save_state(self.inputs.state)
        return how

    def _forget(self, row: Row) -> str:
        with self.lock:
            self.inputs.state.vms.pop(row.name, None)
            save_state(self.inputs.state)
        return "forgotten (it was not running)"

    def _cont(self, row: Row) -> str:
        from launcher.identity import connect

        with connect(self._meta(row.name)) as c:
            c.execute("cont")
        return "resumed"

    def _record(self, row: Row) -> str:
        self._write_record(row.name, self._meta(row.name))
        self._update(row.name, pending="")
        return "recorded"

    def _live(self, row: Row) -> str:
        from launcher import runtime
        from launcher.gitops.live import LiveError, apply_live, device_holds
        from launcher.manifest.load import load_text_full

        run = self.inputs.observed.running[row.name]
        rec = run.record
        assert rec is not None
        old = load_text_full(rec.text, rec.format, rec.path, rec.base_dir).manifest
        new = self.inputs.desired.manifest(row.name)
        assert old is not None
        # a tap or disk the new devices use is taken first: refused while another VM holds it
        was, will = device_holds(old), device_holds(new)
        runtime.change_holds(row.name, sorted(will - was))
        try:
            sent, slots = apply_live(self._meta(row.name), old, new, rec.slots)
        except LiveError as exc:
            if self.inputs.desired.vms[row.name].facts["update"] != "live-or-restart":
                raise
            self.say({"event": "vm-live-refused", "vm": row.name, "detail": exc.message})
            return f"live change refused ({exc.message}); " + self._restart(row)
        runtime.change_holds(row.name, [], sorted(was - will))
        self._write_record(row.name, self._meta(row.name), slots=slots)
        self._update(row.name, pending="")
        return "live: " + (", ".join(dict.fromkeys(sent)) or "recorded")

    # -- helpers --------------------------------------------------------------------------------

    def _up(self, manifest_file: str) -> None:
        """``svlaunch up -d FILE``, in this process (no interpreter start per VM): the same
        host checks, the engine pool when one serves, the same wait for the engine's QMP."""
        import argparse

        from launcher.commands import up

        args = argparse.Namespace(
            manifest=manifest_file, detach=True, paused=False, name=None, tui=False,
            timeout=START_TIMEOUT, restore=None,
        )  # fmt: skip
        try:
            up.run(args)
        except SvlaunchError as exc:
            raise EngineError("start failed: " + _why(exc), hint=exc.hint) from None

    def _stop_vm(self, name: str) -> str:
        from launcher import runtime
        from launcher.commands.down import stop_vm

        try:
            vm = runtime.find(name)
        except SvlaunchError:
            return "was not running"
        meta = vm.meta()
        if meta is None:
            raise EngineError(f"VM {name!r} is starting; not stopping it now")
        notes: list[str] = []
        how = stop_vm(meta, force=False, guest_timeout=self.stop_timeout, say=notes.append)
        if how == "still running":
            raise EngineError(f"VM {name!r} survived SIGKILL")
        from launcher.gitops.supervise import reap

        reap(meta.pid)  # the agent is the subreaper of the engines it started
        vm.remove()
        return how

    def _meta(self, name: str) -> Any:
        from launcher import runtime

        meta = runtime.find(name).meta()
        if meta is None:
            raise EngineError(f"VM {name!r} is still starting")
        return meta

    def _created(self, name: str) -> bool:
        st = self.inputs.state.vms.get(name)
        return True if st is None else st.created or st.pending == "start"

    def _missing_taps(self, name: str) -> list[str]:
        import os

        man = self.inputs.desired.manifest(name)
        return [
            n.ifname for n in man.nets
            if n.ifname and not os.path.exists(f"/sys/class/net/{n.ifname}")
        ]  # fmt: skip

    def _started(self, name: str, taps: list[str]) -> str:
        from launcher import runtime

        vm = runtime.find(name)
        meta = vm.meta()
        self._write_record(name, meta)
        sandbox = (meta.extra or {}).get("sandbox") if meta else None
        made = {"runtime": str(vm.path), "taps": taps, "jail": sandbox}
        engine = {"pid": meta.engine_pid or meta.pid, "start": meta.engine_start} if meta else {}
        self._update(name, pending="", made=made, engine=engine, last_exit=None)
        return f"started (pid {engine.get('pid')})"

    def _write_record(
        self, name: str, meta: Any, slots: dict[str, list[str | None]] | None = None
    ) -> None:
        import json

        from launcher import runtime
        from launcher.gitops.live import devices_of, slots_of_plan

        d = self.inputs.desired
        w = d.vms[name]
        man = d.manifest(name)
        vm = runtime.find(name)
        if slots is None:
            raw = vm.read("plan.json")
            slots = slots_of_plan(json.loads(raw)) if raw else {}
        st = self.inputs.state.vms.get(name)
        record = VmRecord(
            host=self.inputs.host, source=self.inputs.spec.text, revision=self.plan.revision,
            path=w.entry.path, model_hash=w.model_hash, text=d.text_of(w), format=w.format,
            base_dir=w.base_dir, created=True if st is None else st.created or self._created(name),
            applied=time.time(), started=meta.started if meta else 0.0,
            devices=devices_of(man), slots=slots,
            balloon=man.balloon.target if man.balloon is not None else None, paused=man.paused,
        )  # fmt: skip
        write_record(vm, record)

    def _update(self, name: str, **changes: Any) -> None:
        """Change one VM's state entry (made from the plan when new) and save the state."""
        with self.lock:
            state = self.inputs.state
            st = state.vms.get(name)
            w = self.inputs.desired.vms.get(name)
            if st is None:
                st = state.vms[name] = VmState(created=bool(changes.get("created")))
            if w is not None:
                st.source, st.revision, st.path = (
                    self.inputs.spec.text,
                    self.plan.revision,
                    w.entry.path,
                )
                st.model_hash = w.model_hash
            for key, value in changes.items():
                setattr(st, key, value)
            st.applied = time.time()
            save_state(state)

    def _finish(self) -> None:
        """The state's summary fields; entries of VMs that are neither running nor wanted nor
        svlaunch's are dropped."""
        with self.lock:
            state = self.inputs.state
            state.source = self.inputs.spec.text
            state.revision = self.plan.revision
            state.applied = time.time()
            wanted = set(self.inputs.desired.vms)
            running = set(self.inputs.observed.running)
            for name, st in list(state.vms.items()):
                if name not in wanted and name not in running and not st.created:
                    del state.vms[name]
            save_state(state)


def _why(exc: SvlaunchError) -> str:
    """What ``up`` refused, in one line: the located errors of a manifest the host cannot run
    (file:line:col: error[code]: message), else its message."""
    from launcher.errors import InvalidInput

    if isinstance(exc, InvalidInput):
        errors = [i for i in exc.issues if i.is_error][:3]
        return " / ".join(f"{i.mark}: error[{i.code}]: {i.message}" if i.mark else i.message
                          for i in errors) or exc.message  # fmt: skip
    return exc.message

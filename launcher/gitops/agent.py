"""The reconcile loop: fetch, validate, apply, supervise; events as NDJSON on stdout.

Every ``interval`` (and whenever a watched VM ends, or on SIGHUP) the agent looks at the host
(``launcher.gitops.session.look``) and applies the diff. Between two looks it sleeps in one
``select`` on the engines' pidfds, a signal pipe and its timer: no polling, no CPU.

- A revision that does not validate is skipped and reported once; the host keeps running the
  last good revision, which the agent still supervises (read again from the git cache after a
  restart of the agent). A source that cannot be fetched is reported; nothing changes.
- A VM that ended is started again per its ``restart`` policy, after ``Backoff.delay`` of its
  restarts so far (1 s, 2 s, 4 s ... up to the cap); one that ran for the cap counts as healthy.
- Stopping or killing the agent leaves every VM running; a new agent adopts them (state file,
  per-VM records) and finishes what an interrupted apply owed (``pending`` starts).

``svlaunch agent status`` reads ``.gitops/agent.json``, rewritten after every look.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from launcher.errors import HostError, SvlaunchError
from launcher.gitops.session import Inputs, apply_lock, look
from launcher.gitops.source import SourceError, SourceSpec, snapshot_at
from launcher.gitops.state import gitops_dir, save_state, write_atomic
from launcher.gitops.supervise import Backoff, Supervisor, become_subreaper

STATUS_FILE = "agent.json"
LOCK_FILE = "agent.lock"
BUSY_RETRY = 5.0  # seconds, when a CLI apply holds the host


class Agent:
    def __init__(
        self,
        spec: SourceSpec,
        host: str,
        *,
        interval: float,
        prune: bool = False,
        parallel: int = 4,
        stop_timeout: float = 20.0,
        backoff: Backoff | None = None,
        fetch_timeout: float = 120.0,
        out: TextIO | None = None,
    ) -> None:
        self.spec = spec
        self.host = host
        self.interval = interval
        self.prune = prune
        self.parallel = parallel
        self.stop_timeout = stop_timeout
        self.backoff = backoff or Backoff()
        self.fetch_timeout = fetch_timeout
        self.out = out or sys.stdout
        self.supervisor = Supervisor()
        self.workdir = gitops_dir(create=True)
        self.stopping = False
        self.wake_now = True
        self.next_look = 0.0
        self.status: dict[str, Any] = {
            "pid": os.getpid(), "started": time.time(), "host": host, "source": spec.text,
            "interval": interval, "revision": "", "last_good": "", "result": "starting",
            "detail": "", "errors": [], "vms": {},
        }  # fmt: skip
        self.bad_revision = ""
        self.exits: dict[str, dict[str, Any]] = {}  # how watched VMs ended, until the next look

    # -- events and status ----------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """One NDJSON line: journald keeps it as one entry, jq reads it."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=str)
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the events any more: the agent goes on

    def _write_status(self) -> None:
        self.status["updated"] = time.time()
        with contextlib.suppress(OSError):
            write_atomic(self.workdir, STATUS_FILE, json.dumps(self.status, indent=1).encode())

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        lock = _take_lock(self.workdir / LOCK_FILE)
        sel = selectors.DefaultSelector()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(w)
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT,
                                                              signal.SIGHUP)}  # fmt: skip
        sel.register(r, selectors.EVENT_READ, "signal")
        reaper = become_subreaper()
        self.emit("agent-start", pid=os.getpid(), host=self.host, source=self.spec.text,
                  interval=self.interval, subreaper=reaper)  # fmt: skip
        try:
            while not self.stopping:
                due = self.wake_now or time.time() >= self.next_look
                timeout = 0.0 if due else max(0.0, self.next_look - time.time())
                for key, _ in sel.select(timeout):  # ended VMs are noted before a look
                    if key.data == "signal":
                        with contextlib.suppress(BlockingIOError):
                            os.read(r, 512)
                    else:
                        self._ended(sel, key.fd)
                if not self.stopping and (self.wake_now or time.time() >= self.next_look):
                    self.wake_now = False
                    self._look()
                    self._rewatch(sel)
        finally:
            self.emit("agent-stop", pid=os.getpid())
            self.status["result"] = "stopped"
            self._write_status()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            signal.set_wakeup_fd(old_fd)
            sel.close()
            self.supervisor.close()
            for fd in (r, w, lock):
                os.close(fd)
        return 0

    def _signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.wake_now = True
        else:
            self.stopping = True

    def _ended(self, sel: selectors.BaseSelector, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(fd)
        name, how = self.supervisor.ended(fd)
        self._note_exit(name, how)
        self.wake_now = True

    def _note_exit(self, name: str, how: dict[str, Any] | None) -> None:
        """A watched VM ended: say so, and keep how (a reaped child's status) for the policy
        when the engine left no exit record of its own."""
        from launcher import runtime

        rec = None
        with contextlib.suppress(SvlaunchError):
            rec = runtime.vm_dir(name).exit_record()
        ended = rec or how
        self.emit("vm-exited", vm=name, exit=ended)
        if ended is not None and rec is None:
            self.exits[name] = ended

    def _rewatch(self, sel: selectors.BaseSelector) -> None:
        from launcher.gitops.observe import observe

        try:
            running = observe(ask=False).running
        except SvlaunchError as exc:
            self.emit("error", detail=exc.message)
            return
        for name, how in self.supervisor.watch(running):
            self._note_exit(name, how)
            self.wake_now = True
        for key in list(sel.get_map().values()):
            if key.data == "vm" and key.fd not in self.supervisor.by_fd:
                sel.unregister(key.fd)
        registered = {key.fd for key in sel.get_map().values()}
        for fd in self.supervisor.by_fd:
            if fd not in registered:
                sel.register(fd, selectors.EVENT_READ, "vm")

    # -- one look -------------------------------------------------------------------------------

    def _look(self) -> None:
        started = time.monotonic()
        self.next_look = time.time() + self.interval
        inputs = self._inputs()
        if inputs is None or inputs.plan is None:
            self._write_status()
            return
        state = inputs.state
        for name, ended in self.exits.items():
            st = state.vms.get(name)
            if st is not None and (not st.last_exit or st.last_exit.get("reason") == "unrecorded"):
                st.last_exit = ended
        self.exits.clear()
        if state.note:
            self.emit("state-rebuilt", note=state.note)
        self._backoff(inputs)
        plan = inputs.plan
        result = "ok"
        if plan.changes or any(r.fix in ("record", "forget") for r in plan.rows):
            if plan.changes:
                self.emit("plan", revision=plan.revision,
                          changes={r.name: r.action for r in plan.changes})  # fmt: skip
            from launcher.gitops.apply import Applier

            try:
                with apply_lock(wait=False):
                    outcomes = Applier(
                        inputs, parallel=self.parallel, stop_timeout=self.stop_timeout,
                        say=lambda e: self.emit(e.pop("event"), **e),
                    ).run()  # fmt: skip
            except HostError as exc:  # a CLI apply holds the host: try again soon
                self.emit("busy", detail=exc.message)
                self.next_look = time.time() + BUSY_RETRY
                return
            bad = [o for o in outcomes if o.result in ("failed", "skipped")]
            result = "partial" if bad else ("applied" if plan.changes else "ok")
        else:
            save_state(state)
        if self.status["result"] == "ok":  # not when supervising a last good revision
            self.status["result"] = result
        self.status["vms"] = {
            r.name: {
                "action": r.action, "reason": r.reason, "skip": r.skip,
                "restarts": state.vms[r.name].restarts if r.name in state.vms else 0,
                "next_restart": state.vms[r.name].next_restart if r.name in state.vms else 0,
            }
            for r in plan.rows
        }  # fmt: skip
        for st in state.vms.values():
            if st.next_restart:
                self.next_look = min(self.next_look, st.next_restart)
        self._write_status()
        held = {r.name: r.skip for r in plan.rows if r.skip and r.action != "unchanged"}
        self.emit("look", revision=plan.revision, result=self.status["result"],
                  took=round(time.monotonic() - started, 3), **({"held": held} if held else {}))  # fmt: skip

    def _inputs(self) -> Inputs | None:
        """This look's inputs: the newest revision when it is good, else the last good one
        (supervision only: nothing of a bad revision is applied)."""
        try:
            inputs = look(self.spec, self.host, prune=self.prune, clean=True,
                          timeout=self.fetch_timeout)  # fmt: skip
        except SourceError as exc:
            self.emit("fetch-failed", error=exc.message, hint=exc.hint)
            self.status.update(result="fetch-failed", detail=exc.message)
            return self._last_good()
        except SvlaunchError as exc:
            self.emit("error", error=exc.message, hint=exc.hint)
            self.status.update(result="error", detail=exc.message)
            return None
        rev = inputs.desired.snapshot.revision
        self.status["revision"] = rev
        if inputs.plan is None:
            if rev != self.bad_revision:
                self.bad_revision = rev
                self.emit("revision-invalid", revision=rev, errors=_issues(inputs))
            self.status.update(result="invalid", detail=f"revision {rev[:12]} is invalid",
                               errors=_issues(inputs))  # fmt: skip
            return self._last_good()
        if rev != self.status["last_good"]:
            self.emit("revision", revision=rev, previous=self.status["last_good"] or None)
        self.status.update(last_good=rev, result="ok", detail="", errors=[])
        return inputs

    def _last_good(self) -> Inputs | None:
        from launcher.gitops.state import load_state

        commit = self.status["last_good"] or load_state(self.host).revision
        snap = snapshot_at(self.spec, self.workdir, commit) if commit else None
        if snap is None:
            return None
        try:
            inputs = look(self.spec, self.host, prune=False, clean=True, snap=snap)
        except SvlaunchError as exc:
            self.emit("error", error=exc.message)
            return None
        if inputs.plan is None:
            return None
        for row in inputs.plan.rows:  # supervise only: start what died, resume what paused
            if row.action != "drift":
                row.skip = row.skip or "the source's newest revision is invalid"
        return inputs

    def _backoff(self, inputs: Inputs) -> None:
        """Hold back restarts of VMs that died per their back-off; a VM that ran for the cap
        is healthy again."""
        assert inputs.plan is not None
        now = time.time()
        state = inputs.state
        for name, r in inputs.observed.running.items():
            st = state.vms.get(name)
            if (
                st is not None
                and st.restarts
                and r.meta
                and now - r.meta.started > self.backoff.cap
            ):
                st.restarts = 0
        for row in inputs.plan.rows:
            st = state.vms.get(row.name)
            if st is None or row.skip or row.action != "drift" or row.fix != "start" or st.pending:
                continue
            if not st.next_restart:
                st.next_restart = now + self.backoff.delay(st.restarts)
                self.emit("vm-backoff", vm=row.name, restarts=st.restarts,
                          delay=round(st.next_restart - now, 3))  # fmt: skip
            if st.next_restart > now + 0.05:
                row.skip = f"restart back-off: {st.next_restart - now:.1f} s left"
            else:
                st.restarts += 1
                st.next_restart = 0.0


def _issues(inputs: Inputs) -> list[str]:
    from launcher.report import format_issue

    return [format_issue(i) for _, issues in inputs.desired.results for i in issues if i.is_error][
        :20
    ]


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise HostError(
            f"an agent already runs for this runtime root (pid {holder or '?'})",
            hint="'svlaunch agent status' shows it; stop it first",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def agent_running() -> int | None:
    """The pid of the agent holding this runtime root's lock, or None."""
    path = gitops_dir(create=False) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


def read_status() -> dict[str, Any] | None:
    try:
        with open(gitops_dir(create=False) / STATUS_FILE, "rb") as f:
            data = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

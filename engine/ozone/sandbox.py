"""The sandbox: ``Sandbox.from_plan`` validates, ``realize`` builds and starts, ``teardown`` undoes.

Process model: the process that calls ``realize`` is the *supervisor*. It stays outside, in the
host's namespaces, forks the *engine* into a new PID namespace (where the engine is pid 1, so any
helper it might spawn dies with it), waits for it, and reports how it ended (a seccomp kill is
named as such). ``teardown`` mirrors ``realize`` step by step and works from the state file alone,
so it also cleans up after a crashed engine or a killed supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from dataclasses import dataclass
from typing import Any

from engine.ozone import enter as child
from engine.ozone import exits, rootfs, rules
from engine.ozone import sys as osys
from engine.ozone.cgroup import CgroupSet
from engine.ozone.errors import SandboxError, from_oserror
from engine.ozone.layout import apply_ops, plan_ops
from engine.ozone.runtime import Runtime, discover
from engine.ozone.spec import SandboxSpec, build_spec
from engine.ozone.state import DEFAULT_STATE_DIR, State, proc_start_time
from engine.ozone.teardown import (  # noqa: F401  (re-exported: the package's API)
    _mounts_under,
    clean_stale,
    teardown_named,
    teardown_state,
)

JAIL_PLAN = "/plan.json"
JAIL_SECCOMP = "/seccomp"


@dataclass
class Jailed:
    """The running engine, as the supervisor sees it."""

    pid: int
    sandbox: Sandbox
    started: float  # time.monotonic() when realize() began

    def wait(self) -> exits.Exit:
        _, status = os.waitpid(self.pid, 0)
        return exits.describe(self.pid, status)


class Sandbox:
    def __init__(self, spec: SandboxSpec, *, state_dir: str = DEFAULT_STATE_DIR,
                 cgroup_root: str = "/", proc_mounts: str = "/proc/mounts", cgroup_parent: str = "",
                 root_mode: str = "auto") -> None:  # fmt: skip
        """``root_mode``: how the jail becomes ``/`` (``rootfs.py``): ``auto`` picks ``pivot``,
        or ``move`` when the host's root is an initramfs; tests force ``move`` on a normal host."""
        if root_mode not in ("auto", *rootfs.MODES):
            raise ValueError(f"root_mode {root_mode!r} is not auto, pivot or move")
        self.root_mode = root_mode
        self.spec = spec
        self.state_dir = state_dir
        self.cgroups = CgroupSet(
            spec.limits, spec.exec_name, spec.name, cgroup_parent, cgroup_root, proc_mounts
        )
        self.state = State(spec.name, spec.exec_name, spec.jail, pidfile=spec.pidfile)
        #: where the jailed engine writes its exit record (``realize``'s ``exit_fd``)
        self.exit_fd: int | None = None

    @classmethod
    def from_plan(
        cls, plan: Any, *, runtime: Runtime | None = None, dev_root: str = "/dev", **kw: Any
    ) -> Sandbox:
        """Validate everything (pure: reads the host, changes nothing). Raises ``InvalidInput``."""
        if plan.sandbox is None:
            raise SandboxError(
                "plan", "the plan has no ozone section", hint="add `ozone:` to the manifest"
            )
        runtime = runtime or discover(kw.get("state_dir", DEFAULT_STATE_DIR))
        return cls(build_spec(plan, runtime, dev_root=dev_root), **kw)

    @property
    def state_path(self) -> str:
        return State.path_for(self.state_dir, self.spec.exec_name, self.spec.name)

    # -- realize --------------------------------------------------------------------------------

    def realize(
        self,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        exit_fd: int | None = None,
    ) -> Jailed:
        """Build the jail and start ``argv`` (default: the engine) in it. ``exit_fd`` (the write
        end of a pipe) goes into the jail for the engine's exit record (``--exit-fd``): how the
        VM ended, which the supervisor cannot see from the exit status alone. Order and why:

        1. probe: refuse what cannot work (not root, jail or cgroup exists, a limit the host
           cannot apply) while nothing exists yet, so a refusal leaves nothing to clean.
        2. jail root ``<root>/<exec>/<name>``, created exclusively, then the state file, so every
           later step can be undone by ``teardown`` even if this process dies.
        3. place files: mount points for the VM's files and the runtime at their host paths,
           the VM's socket dirs (uid:gid), ``/plan.json`` and the precompiled seccomp filters.
        4. cgroups, limits written before any task joins, so the engine never runs unlimited.
        5. fork into a new PID namespace; the child closes inherited fds first, then waits
           until the supervisor has moved it into the cgroups (all its memory is charged).
        6. child (``enter.py``): UTS/IPC/mount namespaces, netns, bind mounts, pivot_root (or
           MS_MOVE + chroot on an initramfs root, ``rootfs.py``),
           device nodes, read-only root, rlimits, capabilities + uid/gid, no_new_privs, exec.
        A failure in 6 comes back over a CLOEXEC pipe (EOF means exec succeeded); any failure
        runs ``teardown`` for what was made, then raises ``SandboxError`` naming the step.
        """
        started = time.monotonic()
        spec = self.spec
        if os.geteuid() != 0:
            raise SandboxError(
                "probe", "the sandbox must be set up as root", hint="run svlaunch as root"
            )
        if os.path.lexists(spec.jail):
            raise SandboxError("jail", "the jail already exists", path=spec.jail,
                               hint=f"a VM named {spec.name!r} is running or was not cleaned up: "
                               f"python -m engine.ozone teardown --name {spec.name} --exec {spec.exec_name}")  # fmt: skip
        self.cgroups.probe()
        mode = rootfs.choose() if self.root_mode == "auto" else self.root_mode
        netns_fd = None
        if spec.netns:
            netns_fd = self._try(
                "netns", lambda: os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC), spec.netns
            )
        try:
            self._make_pidfile()
            self._make_jail()
            self._place_files()
            self.cgroups.create()
            self.state.cgroups = list(self.cgroups.created)
            self._save()
            self.exit_fd = exit_fd
            report = ("--exit-fd", str(exit_fd)) if exit_fd is not None else ()
            pid = self._fork(
                argv or spec.runtime.argv("-m", "engine", "run", "--plan", JAIL_PLAN, *report),
                env,
                netns_fd,
                mode,
            )
        except BaseException:
            self.teardown(check_alive=False)
            raise
        finally:
            if netns_fd is not None:
                os.close(netns_fd)
        return Jailed(pid, self, started)

    def _try(self, step: str, fn: Any, path: str = "") -> Any:
        try:
            return fn()
        except OSError as e:
            raise from_oserror(step, e, path) from None

    def _save(self) -> None:
        self.state.save(self.state_path)

    def _make_jail(self) -> None:
        base = os.path.dirname(self.spec.jail)
        self._try("jail", lambda: os.makedirs(base, 0o755, exist_ok=True), base)
        self._try("jail", lambda: os.mkdir(self.spec.jail, 0o755), self.spec.jail)
        self.state.jail_created = True
        self._save()

    def _place_files(self) -> None:
        spec, jail = self.spec, self.spec.jail
        for d in spec.own_dirs:  # socket dirs that did not exist: the VM's own
            if not os.path.isdir(d):
                self._try("place files", lambda d=d: os.makedirs(d, 0o750), d)
                os.chown(d, spec.uid, spec.gid)
                self.state.made_dirs.append(d)
        for f in spec.own_files:
            if not os.path.exists(f):
                self._try(
                    "place files",
                    lambda f=f: os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o640)),
                    f,
                )
                os.chown(f, spec.uid, spec.gid)
        self.state.sockets = list(spec.sockets)
        self._save()
        self._redirect_sockets()
        dev_dirs = (
            ("/dev", "/dev/net")
            if any(d.path.startswith("/dev/net/") for d in spec.devices)
            else ("/dev",)
        )
        ops = plan_ops(list(spec.binds), extra_dirs=dev_dirs)
        self._try("place files", lambda: apply_ops(jail, ops), jail)
        with open(jail + JAIL_PLAN, "w") as plan_file:
            plan_file.write(spec.plan_json)
        if spec.seccomp:
            from engine import seccomp  # lazy: only the supervisor needs libseccomp

            os.mkdir(jail + JAIL_SECCOMP, 0o755)
            seccomp.export_all(jail + JAIL_SECCOMP, cache_dir=self.state_dir)

    def _redirect_sockets(self) -> None:
        """Private socket dirs (uid:gid, 0750) and the host symlinks to the sockets in them."""
        spec = self.spec
        if not spec.redirects:
            return
        dirs = [os.path.dirname(p) for _, p in spec.redirects]  # <root>/<exec>/<name>.sock/<i>
        for d in dict.fromkeys([os.path.dirname(dirs[0]), *dirs]):
            if not os.path.isdir(d):
                self._try("place files", lambda d=d: os.mkdir(d, 0o750), d)
                os.chown(d, spec.uid, spec.gid)
                self.state.made_dirs.append(d)
        self._save()
        for host, private in spec.redirects:
            folder = os.path.dirname(host)
            if rules.in_jail(host, spec.jail) and not os.path.isdir(folder):  # ./sub/name.sock
                self._try("place files", lambda f=folder: os.makedirs(f, 0o755), folder)
            if os.path.lexists(host):
                st = os.lstat(host)
                if not (stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
                    raise SandboxError("place files", "a file that is no socket is in the way",
                                       path=host, hint="remove it, or name another socket path")  # fmt: skip
                os.unlink(host)  # a stale socket or link of an earlier run
            self._try("place files", lambda h=host, p=private: os.symlink(p, h), host)
            self.state.links.append([host, private])
            self._save()

    def _fork(
        self, argv: list[str], env: dict[str, str] | None, netns_fd: int | None, mode: str
    ) -> int:
        spec = self.spec
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._try("namespaces", lambda: osys.unshare(osys.CLONE_NEWPID))
            pid = os.fork()
            if pid == 0:  # child: never returns
                self._child(argv, env, netns_fd, go_r, err_w, mode)
            osys.setns(own_pidns, osys.CLONE_NEWPID)  # our later children stay in our PID ns
        finally:
            os.close(own_pidns)
            os.close(go_r)
            os.close(err_w)
        self.state.engine_pid = pid
        self.state.supervisor_pid = os.getpid()
        self.state.supervisor_start = proc_start_time(os.getpid())
        self.state.engine_start = proc_start_time(pid)
        self._save()
        try:
            self.cgroups.attach(pid)
            os.write(go_w, b"g")
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(go_w)
        with os.fdopen(err_r, "rb") as f:
            report = f.read()
        if report:
            os.waitpid(pid, 0)
            raise SandboxError.from_json(json.loads(report))
        if spec.pidfile:
            self._write_pid(pid)
        return pid

    def _make_pidfile(self) -> None:
        """Before the fork: a pidfile in the way (another VM's) stops the start, not an engine
        already running; it is recorded so that teardown removes this one only."""
        from engine.ownfiles import PIDFILE_MODE, create_exclusive

        if self.spec.pidfile:
            made = create_exclusive(self.spec.pidfile, b"", PIDFILE_MODE, "pidfile")
            self.state.pidfile_id = list(made)
            self._save()

    def _write_pid(self, pid: int) -> None:
        from engine.ownfiles import file_id

        path = self.spec.pidfile
        assert path and self.state.pidfile_id
        fd = self._try(
            "pidfile", lambda: os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC), path
        )
        try:
            if list(file_id(os.fstat(fd))) == self.state.pidfile_id:  # still the one we made
                os.write(fd, f"{pid}\n".encode())
                self.state.pidfile_id = list(file_id(os.fstat(fd)))  # its new change time
                self._save()
        finally:
            os.close(fd)

    def _child(
        self,
        argv: list[str],
        env: dict[str, str] | None,
        netns_fd: int | None,
        go_r: int,
        err_w: int,
        mode: str,
    ) -> None:
        spec = self.spec
        code = 1
        try:
            passed = {*spec.keep_fds} | ({self.exit_fd} if self.exit_fd is not None else set())
            keep = {go_r, err_w, *passed} | ({netns_fd} if netns_fd is not None else set())
            child.close_inherited_fds(keep)
            if os.read(go_r, 1) != b"g":
                os._exit(1)  # the supervisor gave up
            os.close(go_r)
            for fd in passed:
                os.set_inheritable(fd, True)
            child.enter(spec, netns_fd, mode)
            self._exec(argv, self._env(env), err_w)
        except child.StepFailed as e:
            err = from_oserror(e.step, e.err, e.path, e.hint)
            os.write(err_w, json.dumps(err.to_json()).encode())
        except OSError as e:
            os.write(err_w, json.dumps(from_oserror("exec", e, argv[0]).to_json()).encode())
        except BaseException as e:  # never let the child run the caller's code
            os.write(err_w, json.dumps({"step": "child", "message": repr(e)}).encode())
        finally:
            os._exit(code)

    def _exec(self, argv: list[str], env: dict[str, str], report_fd: int) -> None:
        """The child's last step: exec the payload. ``report_fd`` closes on exec, which tells
        the supervisor the jail is complete (``engine.pool`` overrides this to run the engine
        it has already imported, in this process)."""
        os.execve(argv[0], argv, env)

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUTF8": "1",
               "SVLAUNCH_JAILED": "1"}  # fmt: skip
        if self.spec.runtime.pythonpath:
            env["PYTHONPATH"] = ":".join(self.spec.runtime.pythonpath)
        env.update({k: v for k, v in os.environ.items() if k.startswith("SVLAUNCH_")})
        env["SVLAUNCH_SECCOMP_DIR" if self.spec.seccomp else "SVLAUNCH_SECCOMP"] = (
            JAIL_SECCOMP if self.spec.seccomp else "off"
        )
        env.update(extra or {})
        return env

    # -- teardown -------------------------------------------------------------------------------

    def teardown(self, check_alive: bool = True) -> None:
        """Undo ``realize`` for this sandbox (see ``teardown_state``)."""
        teardown_state(self.state, self.cgroups, check_alive=check_alive)
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass

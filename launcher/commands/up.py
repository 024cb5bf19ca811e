"""run a VM with the builtin engine

By default the VM runs in the foreground: its serial console is this terminal (when the
manifest says serial stdio) and Ctrl-C stops it cleanly (guest powerdown, then quit; press
Ctrl-C again to force). --tui shows the live terminal UI instead (the serial tail is in it);
-d/--detach starts the engine in the background, waits until QMP answers and returns; its
serial console (stdio in the manifest) becomes a socket for 'svlaunch console NAME'.
Runtime state (plan, pid, sockets, log) lives in $SVLAUNCH_RUNTIME_DIR, /run/svlaunch (root)
or $XDG_RUNTIME_DIR/svlaunch.

examples:
  svlaunch up examples/quickstart.toml            # serial console here, Ctrl-C stops it
  svlaunch up -d examples/quickstart.toml         # background; then: svlaunch ps
  svlaunch up --paused -d vm.toml && svlaunch qmp vm cont
  svlaunch up --tui vm.toml                       # live dashboard (p pause, r resume, q detach)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

ENGINE_START_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest file (.toml, .yaml, .yml)")
    parser.add_argument("-d", "--detach", action="store_true", help="run in the background")
    parser.add_argument("--paused", action="store_true", help="build the VM but do not start vCPUs")
    parser.add_argument("--name", help="override the manifest's VM name")
    parser.add_argument("--tui", action="store_true", help="show the live terminal UI")
    parser.add_argument(
        "--timeout",
        type=float,
        default=ENGINE_START_TIMEOUT,
        help="seconds to wait for the engine's QMP socket (default %(default)s)",
    )


def prepare_plan(plan: Any, vm: Any, *, detach: bool, paused: bool, name: str | None) -> Any:
    """The plan the engine gets: QMP and (detached) serial in the runtime dir.

    svlaunch detaches the engine itself (new session, output to the runtime log), so the plan's
    ``daemonize`` is cleared; the engine still writes and removes the manifest's pidfile.
    """
    from launcher.compile.plan import ChardevPlan

    changes: dict[str, Any] = {"daemonize": False}
    if name:
        changes["name"] = name
    if not plan.qmp:
        changes["qmp"] = (str(vm.qmp_socket),)
    if paused:
        changes["paused"] = True
    serial = plan.serial
    if detach and serial is not None and serial.chardev.backend == "stdio":
        sock = ChardevPlan(serial.chardev.id, "socket", str(vm.serial_socket), True, True)
        changes["serial"] = dataclasses.replace(serial, chardev=sock)
    return dataclasses.replace(plan, **changes)


def engine_command(plan: Any, plan_file: str) -> list[str]:
    """argv that starts the engine for ``plan``."""
    argv = [sys.executable, "-m", "engine", "run", "--plan", plan_file]
    # ---- SANDBOX CALL SITE (engine.ozone) ------------------------------------------------------
    # With a sandbox the engine starts inside the ozone jail: the sandbox launcher turns the
    # plain engine argv into the jailed one (chroot, namespaces, cgroups, capabilities).
    if plan.sandbox is not None:
        try:
            from engine.ozone.launch import sandboxed_argv  # type: ignore[import-not-found]
        except ImportError:
            from launcher.errors import HostError

            raise HostError(
                "this manifest asks for the ozone sandbox, which this build cannot start yet",
                hint="remove the [sandbox] section to run without it",
            ) from None
        argv = list(sandboxed_argv(plan, argv))
    # ---------------------------------------------------------------------------------------------
    return argv


def _serial_path(plan: Any) -> str | None:
    s = plan.serial
    if s is not None and s.chardev.backend == "socket" and s.chardev.path:
        return str(s.chardev.path)
    return None


def _wait_for_qmp(proc: subprocess.Popen[bytes], qmp: str, log: str | None, timeout: float) -> None:
    from launcher.errors import EngineError, HostError
    from launcher.qmpclient import QmpClient

    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            tail = ""
            if log and os.path.exists(log):
                with open(log, errors="replace") as f:
                    tail = "".join(f.readlines()[-15:])
            raise EngineError(
                f"the engine exited with code {code} before its QMP socket answered"
                + (f"; last log lines:\n{tail}" if tail else ""),
                hint="run 'svlaunch check MANIFEST' to see what this host lacks",
            )
        if os.path.exists(qmp):
            try:
                with QmpClient.connect(qmp, timeout=2.0) as c:
                    c.execute("query-status")
                return
            except HostError:
                pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise EngineError(f"the engine's QMP socket {qmp} did not answer within {timeout:g}s")
        time.sleep(0.05)


def run(args: argparse.Namespace) -> int:
    from launcher import runtime
    from launcher.compile.engine_plan import compile_plan
    from launcher.manifest import load_manifest

    plan = compile_plan(load_manifest(args.manifest))
    claim = runtime.claim(args.name or plan.name)
    vm = claim.vm
    proc: subprocess.Popen[bytes] | None = None
    try:
        # With the TUI the terminal is the dashboard's: engine output goes to the log and the
        # serial console to a socket, exactly as when detached.
        background_io = args.detach or args.tui
        plan = prepare_plan(plan, vm, detach=background_io, paused=args.paused, name=args.name)
        vm.plan_file.write_text(plan.dumps())
        argv = engine_command(plan, str(vm.plan_file))
        os.set_inheritable(claim.lock_fd, True)
        log = str(vm.log_file)
        if background_io:
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            stdio: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": out}
        else:
            stdio = {}
        # A new session: Ctrl-C on this terminal reaches svlaunch only, which stops the VM
        # cleanly; the engine still reads and writes the terminal (serial stdio).
        proc = subprocess.Popen(argv, pass_fds=(claim.lock_fd,), start_new_session=True, **stdio)
        if background_io:
            os.close(out)
        meta = runtime.Meta(
            name=vm.name,
            pid=proc.pid,
            pid_start=runtime.process_start_time(proc.pid),
            started=time.time(),
            qmp=plan.qmp[0],
            serial=_serial_path(plan),
            manifest=os.path.abspath(args.manifest),
            detached=args.detach,
            vcpus=plan.topology.cpus,
            memory=plan.memory.size,
        )
        vm.write_meta(meta)
        _wait_for_qmp(proc, meta.qmp, log if background_io else None, args.timeout)
        if args.detach:
            print(f"{vm.name}: started (pid {proc.pid}); QMP at {meta.qmp}")
            if meta.serial:
                print(f"{vm.name}: serial console: svlaunch console {vm.name}")
            return 0
        return _foreground(proc, vm, meta, tui=args.tui)
    finally:
        claim.release()  # the engine holds its own copy of the lock for as long as it lives
        if (proc is not None and not args.detach and proc.poll() is not None) or proc is None:
            vm.remove()


def _foreground(proc: subprocess.Popen[bytes], vm: Any, meta: Any, *, tui: bool) -> int:
    from launcher.commands.down import stop_vm

    try:
        if tui:
            from launcher.tui_live import run_tui

            run_tui(meta.qmp, serial=meta.serial, title=vm.name)
            if proc.poll() is None:
                print(f"{vm.name}: detached; the VM keeps running (svlaunch down {vm.name})")
                return 0
        return proc.wait()
    except KeyboardInterrupt:
        print(f"\n{vm.name}: stopping (Ctrl-C again to force)", file=sys.stderr)
        try:
            stop_vm(meta, force=False, wait=lambda t: _wait_child(proc, t))
        except KeyboardInterrupt:
            stop_vm(meta, force=True, wait=lambda t: _wait_child(proc, t))
        proc.wait()
        return 0


def _wait_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False

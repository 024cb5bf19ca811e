"""run a VM with the builtin engine

By default the VM runs in the foreground: its serial console is this terminal (when the
manifest says serial stdio) and Ctrl-C stops it cleanly (guest powerdown, then quit; press
Ctrl-C again to force); Ctrl-] detaches and leaves it running. --tui shows the live terminal
UI instead (the serial tail is in it); -d/--detach starts the engine in the background, waits until QMP answers and returns; its
serial console (stdio in the manifest) becomes a socket for 'svlaunch console NAME'.
Runtime state (plan, pid, sockets, log) lives in $SVLAUNCH_RUNTIME_DIR, /run/svlaunch (root)
or $XDG_RUNTIME_DIR/svlaunch.

examples:
  svlaunch up examples/quickstart.toml            # serial console here, Ctrl-C stops it
  svlaunch up -d examples/quickstart.toml         # background; then: svlaunch ps
  svlaunch up --paused -d vm.toml && svlaunch qmp vm cont
  svlaunch up --tui vm.toml                       # live dashboard (p pause, r resume, q detach)
  svlaunch up -d --restore tmpl/ clone1.toml      # restore a snapshot (svlaunch snapshot)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

from launcher.report import shown

ENGINE_START_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest file (.toml, .yaml, .yml)")
    parser.add_argument("-d", "--detach", action="store_true", help="run in the background")
    parser.add_argument("--paused", action="store_true", help="build the VM but do not start vCPUs")
    parser.add_argument("--name", help="override the manifest's VM name")
    parser.add_argument("--tui", action="store_true", help="show the live terminal UI")
    parser.add_argument(
        "--restore",
        metavar="DIR",
        help="restore the snapshot in DIR instead of booting (the manifest's incoming)",
    )
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
    from engine.plan import ChardevPlan

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
    from engine.__main__ import engine_argv

    argv = engine_argv(plan_file)
    # ---- SANDBOX CALL SITE (engine.ozone) ------------------------------------------------------
    # With a sandbox the ozone supervisor starts the engine inside its jail (chroot, namespaces,
    # cgroups, capabilities, seccomp) and forwards signals; it inherits the runtime lock, so
    # the VM counts as running exactly as long as the supervisor does.
    if plan.sandbox is not None:
        argv = [sys.executable, "-m", "engine.ozone", "run", "--plan", plan_file]
    # ---------------------------------------------------------------------------------------------
    return argv


def _sandbox_meta(plan: Any) -> dict[str, Any]:
    """What a later ``down`` or stale-state clean-up needs to tear the jail down."""
    sb = plan.sandbox
    if sb is None:
        return {}
    return {"sandbox": {"name": sb.name, "exec": os.path.basename(sb.exec_file)}}


def _serial_path(plan: Any) -> str | None:
    s = plan.serial
    if s is not None and s.chardev.backend == "socket" and s.chardev.path:
        return str(s.chardev.path)
    return None


def _wait_for_qmp(
    proc: subprocess.Popen[bytes],
    meta: Any,
    log: str | None,
    timeout: float,
    *,
    detach: bool,
    vm: Any = None,
) -> int | None:
    """The engine's pid once *it* answers on its QMP socket (not whoever else may listen at that
    path: the listener must be our engine, or the sandbox supervisor's child, and say the VM's
    name); None if a foreground guest already ran to its end (a poweroff, or a reset or panic
    its exit record names: the engine's code says which)."""
    from launcher.errors import EngineError, HostError
    from launcher.identity import check_peer, parent_pid
    from launcher.qmpclient import QmpClient
    from launcher.runtime_ended import guest_ended_it

    deadline = time.monotonic() + timeout
    why = ""
    while True:
        code = proc.poll()
        ended = code is not None and not detach
        if ended and (code == 0 or (vm is not None and guest_ended_it(vm))):  # ran to its end
            return None
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
        if os.path.exists(meta.qmp):
            try:
                with QmpClient.connect(meta.qmp, timeout=2.0) as c:
                    from engine.ownfiles import peer_pid

                    pid = peer_pid(c.sock)
                    ours = {proc.pid} | ({pid} if parent_pid(pid) == proc.pid else set())
                    check_peer(c, meta.name, ours)
                    c.execute("query-status")
                if proc.poll() is None:
                    return pid
            except HostError as exc:
                why = exc.message
        if time.monotonic() > deadline:
            proc.terminate()
            raise EngineError(
                f"the engine's QMP socket {meta.qmp} did not answer within {timeout:g}s"
                + (f" ({why})" if why else "")
            )
        time.sleep(0.05)


def _note_engine_files(vm: Any, plan: Any) -> None:
    """Record the sockets and pidfile the engine made (their inodes): a clean-up after a crash
    removes exactly those, never a file that took their path since."""
    from engine.ownfiles import file_id, plan_made_paths
    from launcher.runtime import Made, kind_of

    made = []
    for path, role in plan_made_paths(plan):
        if role != "socket" and path != plan.pidfile:
            continue  # file chardevs and disks may be the user's own files
        try:
            st = os.lstat(path)
        except OSError:
            continue
        rel = os.path.relpath(path, vm.path)
        name = rel if os.sep not in rel and not rel.startswith(".") else path
        ident = (st.st_dev, st.st_ino) if name != path else file_id(st)  # (see Made)
        made.append(Made(name, kind_of(st), "engine", ident))
    vm.note(*made)


def _load_for_this_host(path: str, restore: str | None = None) -> Any:
    """The manifest, checked like ``svlaunch check``: a missing kernel or tap is a located error
    here, before an engine process starts, not a failure in the engine's log. ``restore``: the
    snapshot folder of ``--restore``, which becomes the manifest's ``incoming`` (and is checked
    against it: docs/snapshot.md)."""
    from launcher.errors import InvalidInput
    from launcher.manifest.load import load_file_full
    from launcher.validate.host import check_host

    r = load_file_full(path)
    issues = list(r.issues)
    man = r.manifest
    if man is not None and not any(i.is_error for i in issues):
        if restore is not None:
            from launcher.validate.snapshot import restore_issues

            man = dataclasses.replace(man, incoming=f"file:{os.path.abspath(restore)}")
            issues += r.smap.locate(restore_issues(man))
        issues += r.smap.locate(check_host(man))
    if man is None or any(i.is_error for i in issues):
        raise InvalidInput([i for i in issues if i.is_error])
    return man


def run(args: argparse.Namespace) -> int:
    from engine.ownfiles import plan_made_paths
    from launcher import runtime
    from launcher.compile.engine_plan import compile_plan

    man = _load_for_this_host(args.manifest, args.restore)
    plan = compile_plan(man)
    if args.tui:
        from launcher.tui_live import require_terminal

        require_terminal("up --tui")  # before an engine starts paused for nobody
    vm = runtime.vm_dir(args.name or plan.name)
    # The engine never owns this terminal: its output goes to the runtime log and a stdio
    # serial becomes a socket that svlaunch relays (foreground), the TUI tails, or
    # 'svlaunch console' attaches to (detached). Interactive modes start the engine paused
    # and resume it once attached, so no early console output is lost.
    stdio_serial = plan.serial is not None and plan.serial.chardev.backend == "stdio"
    relay = not args.detach and not args.tui and stdio_serial
    attach = relay or args.tui
    plan = prepare_plan(plan, vm, detach=True, paused=args.paused or attach, name=args.name)
    # Refused here, before any engine starts, if a VM of this name runs or another VM holds
    # (or something serves) one of the sockets, pidfile, chardev files or disks of this one.
    claim = runtime.claim(vm.name, plan_made_paths(plan))
    proc: subprocess.Popen[bytes] | None = None
    try:
        os.close(vm.create("plan.json", plan.dumps().encode()))
        vm.note(*_planned_sockets(vm, plan))
        argv = engine_command(plan, str(vm.plan_file))
        os.set_inheritable(claim.lock_fd, True)
        log = str(vm.log_file)
        out = vm.create("engine.log", mode=runtime.LOG_MODE)
        try:
            proc = _spawn_engine(argv, vm, claim.lock_fd, out, plan)
        finally:
            os.close(out)
        meta = runtime.Meta(
            name=vm.name,
            pid=proc.pid,
            pid_start=runtime.process_start_time(proc.pid),
            started=time.time(),
            qmp=plan.qmp[0],
            serial=_serial_path(plan),
            manifest=os.path.abspath(args.manifest),
            pidfile=plan.pidfile,
            detached=args.detach,
            vcpus=plan.topology.cpus,
            memory=plan.memory.size,
            extra=_sandbox_meta(plan),
            plan=str(vm.plan_file),
        )
        vm.write_meta(meta)
        engine_pid = _wait_for_qmp(proc, meta, log, args.timeout, detach=args.detach, vm=vm)
        from launcher.commands.pool import spawn_if_wanted

        spawn_if_wanted()
        if engine_pid is None:
            if proc.returncode:
                _print_ending(vm)
            return proc.returncode
        meta = dataclasses.replace(
            meta, engine_pid=engine_pid, engine_start=runtime.process_start_time(engine_pid)
        )
        vm.write_meta(meta)
        _note_engine_files(vm, plan)
        _set_balloon_target(meta, man)
        if args.detach:
            sandboxed = f", sandbox supervisor {proc.pid}" if engine_pid != proc.pid else ""
            print(
                f"{vm.name}: started (pid {engine_pid}{sandboxed}); QMP at {shown(str(meta.qmp))}"
            )
            if meta.serial:
                print(f"{vm.name}: serial console: svlaunch console {vm.name}")
            return 0
        from launcher.commands.up_foreground import foreground

        code = foreground(proc, vm, meta, relay=relay, tui=args.tui, resume=not args.paused)
        if code not in (0, None):
            _print_log_tail(log)
            _print_ending(vm)
        if code is not None and code < 0:  # the engine died of a signal: report it as a shell does
            print(f"{vm.name}: the engine was killed by signal {-code}", file=sys.stderr)
            code = 128 - code
        return code
    finally:
        claim.release()  # the engine holds its own copy of the lock for as long as it lives
        if proc is None or proc.poll() is not None:
            vm.remove()


def _set_balloon_target(meta: Any, man: Any) -> None:
    """``balloon.target``: the engine's plan has no balloon target (nor has StratoVirt's argv),
    so svlaunch asks for it over QMP as soon as the engine answers; the guest's driver follows
    once it loads."""
    target = man.balloon.target if man.balloon is not None else None
    if target is None:
        return
    from launcher.identity import connect

    with connect(meta) as c:
        c.execute("balloon", {"value": target})


def _spawn_engine(argv: list[str], vm: Any, lock_fd: int, out: int, plan: Any) -> Any:
    """The engine process: forked by the engine pool when one serves (docs/pool.md), else
    exec'd here. Either way in a new session (Ctrl-C on this terminal reaches svlaunch only,
    which stops the VM), holding the runtime lock, with its output in the runtime log, and
    given ``exit.json`` to record how the VM ended (docs/lifecycle.md)."""
    from launcher.commands.pool import start_through_pool

    proc = start_through_pool(vm, lock_fd, out, paused=plan.paused, incoming=plan.incoming)
    if proc is not None:
        from launcher.runtime import Made

        st = os.lstat(vm.exit_file)  # made by svlaunch for the engine to say how it ended
        vm.note(Made("exit.json", "file", "svlaunch", (st.st_dev, st.st_ino)))
        return proc
    exit_fd = vm.create("exit.json")
    try:
        return subprocess.Popen(
            [*argv, "--exit-fd", str(exit_fd)],
            pass_fds=(lock_fd, exit_fd),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    finally:
        os.close(exit_fd)


def _planned_sockets(vm: Any, plan: Any) -> list[Any]:
    """The engine's sockets in the VM's folder, recorded before it makes them (a crash before
    they answer still leaves nothing behind)."""
    from engine.ownfiles import plan_made_paths
    from launcher.runtime import Made

    return [
        Made(os.path.basename(path), "socket", "engine")
        for path, role in plan_made_paths(plan)
        if role == "socket" and os.path.dirname(path) == str(vm.path)
    ]


def _print_log_tail(log: str, lines: int = 15) -> None:
    try:
        with open(log, errors="replace") as f:
            tail = f.readlines()[-lines:]
    except OSError:
        return
    if tail:
        # The log quotes the guest and the manifest: escaped, so it cannot drive the terminal.
        sys.stderr.write(
            "engine log (last lines):\n" + shown("".join(tail).rstrip("\n"), lines=True) + "\n"
        )


def _print_ending(vm: Any) -> None:
    from launcher.runtime_ended import ending_line

    line = ending_line(vm)
    if line:
        print(shown(line), file=sys.stderr)

"""The engine process: ``python -m engine run --plan FILE [--paused]`` (one process per VM).

Reads the plan, builds the VM (vCPUs paused), starts QMP on the plan's sockets, resumes unless
paused, and serves the main loop until the VM stops. The exit code says how it ended
(``engine.ending``, the table in docs/lifecycle.md): 0 when the guest powered off or the host
asked it to stop (QMP quit, SIGTERM/SIGINT), 1 when the host could not run it (bad plan, KVM
refused, a fatal exit), 2 for bad flags, 3 for an internal error (with a traceback), 4 guest
reset, 5 QMP system_reset, 6 triple fault, 7 guest panic. ``--exit-fd N`` also writes the exit
record (one JSON object, ``engine.ending.record``) to descriptor N as the engine ends: that is
how ``svlaunch up`` and the sandbox supervisor learn the cause behind a code.

``engine_argv(plan_file)`` is how the launcher and the sandbox start it: ``python -I -S -c``
with the project and its site-packages put on ``sys.path`` explicitly. ``-S`` skips ``site``
(an editable install's ``.pth`` handling is slow), ``-I`` ignores the caller's PYTHON* variables,
and ``-c`` keeps this module's bytecode cached. QMP and logging handlers are imported after the
guest starts; a start-up trace (``SVLAUNCH_STARTUP_TRACE``) shows where the time goes.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import TYPE_CHECKING

from engine.errors import EXIT_INTERNAL, record_crash

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

T0 = time.monotonic()
#: (phase, time.monotonic()) marks; printed to stderr at exit with $SVLAUNCH_STARTUP_TRACE set
#: (``bench/engine_startup.py`` passes its spawn time there to get exec -> phase numbers).
MARKS: list[tuple[str, float]] = [("interpreter up, engine/__main__ running", T0)]
#: how the last VM ``run`` served ended (``engine.ending.Ending``), for the exit record
ENDING: Any = None


def mark(phase: str) -> None:
    MARKS.append((phase, time.monotonic()))


def restart_clock(phase: str) -> None:
    """A forked engine (``engine.pool``) starts its start-up clock and marks at the fork."""
    global T0
    T0 = time.monotonic()
    MARKS[:] = [(phase, T0)]


def _print_marks() -> None:
    origin = os.environ.get("SVLAUNCH_STARTUP_TRACE", "")
    try:
        t = float(origin)
    except ValueError:
        t = T0
    for phase, at in MARKS:
        sys.stderr.write(f"startup-trace {(at - t) * 1000:8.2f} ms  {phase}\n")


def _script_paths() -> None:
    """Run as ``python -I -S engine/__main__.py``: find the project and its third-party packages."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.path.join(root, "engine")
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]  # engine/seccomp.py
    sys.path.insert(0, root)  # would shadow pyseccomp's `seccomp` if engine/ stayed first
    if not sys.flags.no_site:
        return
    venv = os.path.dirname(os.path.dirname(sys.executable))
    lib = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    sp = os.path.join(lib, "site-packages")
    if os.path.exists(os.path.join(venv, "pyvenv.cfg")) and os.path.isdir(sp):
        sys.path.append(sp)
    else:  # not a venv: let site find the installation's packages (slower, always right)
        import site

        site.main()


if not __package__:
    _script_paths()


def boot(argv: list[str] | None = None) -> int:
    """The process entry point: ``main`` with the collector off during start-up (it allocates
    many long-lived objects) and any unexpected exception reported as an internal error (3)."""
    return guarded(lambda: main(argv))


def recorded(exit_fd: int | None, body: Callable[[], int], **extra: Any) -> int:
    """``guarded(body)``, then the exit record written to ``exit_fd`` (if given): the code, and
    the cause when the VM ran (``ENDING``). Used by ``main`` and by the engine a pool forks."""
    code = guarded(body)
    if exit_fd is not None:
        from engine import ending

        ending.write(exit_fd, ending.record(code, ENDING, **extra))
    return code


def guarded(body: Callable[[], int]) -> int:
    """``body()`` as ``boot`` runs ``main`` (shared with the engines ``engine.pool`` forks)."""
    gc.disable()
    try:
        return crash_guard(body)
    finally:
        gc.enable()


def crash_guard(body: Callable[[], int], who: str = "engine") -> int:
    """``body()``; a bug in it exits ``EXIT_INTERNAL`` with its traceback on stderr and in
    ``$SVLAUNCH_CRASH_DIR`` (the engine, the sandbox supervisor and the pool alike: exit 1 would
    read as a host error in the VM's exit record)."""
    try:
        return body()
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"{who}: internal error (a bug): please report the traceback above", file=sys.stderr)
        record_crash(who, sys.argv, traceback.format_exc())
        return EXIT_INTERNAL


def engine_argv(plan_file: str, *args: str, python: str | None = None) -> list[str]:
    """The fastest-starting argv for the engine (the launcher and the sandbox should use it).

    Built in the launcher's process, whose ``sys.path`` knows where the project and its
    third-party packages (cffi, pyseccomp, pyroute2) live; the engine skips ``site``.
    """
    return entry_argv("engine.__main__", "boot", "run", "--plan", plan_file, *args, python=python)


def entry_argv(module: str, func: str, *args: str, python: str | None = None) -> list[str]:
    """``python -I -S -c`` calling ``module.func()`` as the exit status (see ``engine_argv``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [root]
    for p in sys.path:
        if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p) and p not in paths:
            paths.append(p)
    code = f"import sys; sys.path[:0] = {paths!r}; from {module} import {func}; sys.exit({func}())"
    return [python or sys.executable, "-I", "-S", "-c", code, *args]


def _progress(done: int, total: int) -> None:
    if total >= 1 << 30 and sys.stderr.isatty():
        pct = done * 100 // total
        sys.stderr.write(f"\rpreallocating guest RAM: {pct:3d}% ({done >> 20}/{total >> 20} MiB)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def read_plan(plan_path: str) -> Any:
    """The plan in ``plan_path``; ``ValueError`` with a one-line reason when it cannot be read."""
    from engine.plan import Plan

    try:
        with open(plan_path) as f:
            return Plan.loads(f.read())
    except OSError as e:
        raise ValueError(f"cannot read plan {plan_path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{plan_path}: not a valid engine plan: {e}") from None


def run(plan_path: str, *, paused: bool, verbose: bool, plan: Any = None) -> int:
    """Run the VM of ``plan_path`` (or of ``plan``, already read: a pool-forked engine)."""
    from engine.errors import SvlaunchError

    if plan is None:
        try:
            plan = read_plan(plan_path)
        except ValueError as e:
            print(f"engine: {e}", file=sys.stderr)
            return 1
        mark("plan read")
    from engine.logsetup import apply_logging, configure_logging

    configure_logging(plan.log, plan.log_file, verbose, lazy=True)  # applied at the first log
    paused = paused or plan.paused

    import signal

    from engine.vm import Vm

    mark("engine modules imported")

    seccomp: Any = None
    if plan.seccomp or os.environ.get("SVLAUNCH_SECCOMP_MEASURE"):
        from engine import seccomp

    def thread_init() -> None:
        seccomp.install("vcpu", enabled=plan.seccomp)

    vm = Vm(plan, progress=_progress, thread_init=thread_init if seccomp else None)
    server = None
    pidfile: tuple[int, int, int] | None = None  # the pidfile this engine created (ownfiles)
    try:
        vm.start(paused=True)
        mark("VM built (vCPUs parked)")
        assert vm.machine is not None
        signal.signal(signal.SIGTERM, lambda signum, _: vm.on_signal(signum))
        signal.signal(signal.SIGINT, lambda signum, _: vm.on_signal(signum))
        if not paused:
            # Enter the guest now: QMP, the pidfile and logging come up while it runs (no
            # client can be connected before the QMP socket exists, so no event is lost).
            vm.resume()
            mark("vCPUs resumed")
            gc.enable()
        if plan.log or verbose or "logging" in sys.modules:  # -D on, or a module logs for real
            apply_logging()
        if plan.pidfile:
            from engine.ownfiles import PIDFILE_MODE, create_exclusive

            data = f"{os.getpid()}\n".encode()
            pidfile = create_exclusive(plan.pidfile, data, PIDFILE_MODE, "pidfile")
        if plan.qmp:
            from engine.qmp.server import QmpServer

            qmp = QmpServer(vm, plan.qmp, loop=vm.machine.loop)
            vm.sink = qmp
            qmp.start()
            server = qmp  # closed (its sockets unlinked) only once it has bound them all
            mark("QMP listening")
        if seccomp is not None:
            for io in vm.machine.iothreads.values():
                io.loop.call_soon_threadsafe(lambda: seccomp.install("io", enabled=plan.seccomp))
        if plan.log or verbose:
            import logging

            logging.getLogger("engine").info(
                "VM %s built in %.1f ms", plan.name, (time.monotonic() - T0) * 1000
            )
        gc.enable()
        if seccomp is not None:
            seccomp.install("main", enabled=plan.seccomp)
        return vm.run()
    except SvlaunchError as e:
        print(f"engine: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        global ENDING
        ENDING = vm.ending
        if vm.ending is not None:
            print(f"engine: VM {plan.name} ended: {vm.ending.cause} ({vm.ending.detail}); "
                  f"exit code {vm.ending.code}", file=sys.stderr)  # fmt: skip
        if server is not None:
            server.close()
        _print_exit_profiles(vm)
        vm.close()
        if os.environ.get("SVLAUNCH_STARTUP_TRACE") is not None:
            if vm.first_run_at is not None:
                MARKS.append(("vCPUs first resumed (guest runs)", vm.first_run_at))
                MARKS.sort(key=lambda m: m[1])
            _print_marks()
        if pidfile is not None:
            from engine.ownfiles import unlink_if_same

            unlink_if_same(plan.pidfile, pidfile)  # ours only: never another VM's pidfile


def _print_exit_profiles(vm: Any) -> None:
    """``SVLAUNCH_EXIT_STATS=1``: each vCPU's exits and where their time went, on stderr."""
    m = vm.machine
    if m is None:
        return
    profiled = False
    for v in m.vcpus:
        prof = v.ctx.profile
        if prof is not None:
            v.pause(timeout=1.0)
            sys.stderr.write("".join(f"exit-stats {line}\n" for line in prof.lines(v.index)))
            profiled = True
    if profiled:  # where console output went (docs/console.md)
        for name, chardev in m.devices.chardevs.items():
            q = chardev.output
            sys.stderr.write(
                f"exit-stats chardev {name}: {q.sent} bytes in {q.writes} writes, "
                f"{q.dropped} dropped, {q.refused} refused\n"
            )
        if m.devices.coalescing is not None:
            ring = m.devices.coalescing.ring
            sys.stderr.write(f"exit-stats coalesced PIO writes applied: {ring.applied}\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    args = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m engine", description="svlaunch's KVM engine")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the VM of an engine plan")
    r.add_argument("--plan", required=True, help="plan JSON (from `svlaunch plan`)")
    r.add_argument("--paused", action="store_true", help="build the VM but do not start the vCPUs")
    r.add_argument("-v", "--verbose", action="store_true")
    r.add_argument(
        "--exit-fd",
        type=int,
        metavar="N",
        help="write the exit record (JSON: how the VM ended) to this inherited descriptor",
    )
    ns = p.parse_args(args)
    if ns.exit_fd is not None:
        fd = ns.exit_fd
        return recorded(fd, lambda: run(ns.plan, paused=ns.paused, verbose=ns.verbose))
    return run(ns.plan, paused=ns.paused, verbose=ns.verbose)


if __name__ == "__main__":
    sys.exit(boot())

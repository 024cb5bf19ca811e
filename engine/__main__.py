"""The engine process: ``python -m engine run --plan FILE [--paused]`` (one process per VM).

Reads the plan, builds the VM (vCPUs paused), starts QMP on the plan's sockets, resumes unless
paused, and serves the main loop until the guest powers off or QMP quits. Exit codes: 0 when the
guest powered off/reset or QMP quit, 1 for a user-facing error (bad plan, host cannot run it) or
a fatal guest exit, 2 for an internal error (with a traceback).

Start-up time is a feature (exec → first guest instruction), so the fast way to start the engine
is ``engine_argv(plan_file)``: ``python -I -S -c "<put the project and site-packages on
sys.path>; from engine.__main__ import boot; ..." run --plan FILE``. ``-S`` skips ``site`` (in a
venv with an editable install, its ``.pth`` finder alone imports pathlib, re and importlib.util:
~15 ms), ``-I`` ignores the environment's PYTHON* variables, and ``-c`` instead of a script path
keeps this module's bytecode cached (a script is recompiled on every run: ~3 ms). Run as a
script (``python -I -S engine/__main__.py``) it finds the venv's site-packages itself.
Everything not needed before the first ``KVM_RUN`` (argparse, logging handlers, QMP) is
imported lazily, and the guest starts before QMP comes up.
"""

from __future__ import annotations

import gc
import os
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms before the T0 mark
if TYPE_CHECKING:
    from typing import Any

T0 = time.monotonic()
#: (phase, time.monotonic()) marks; printed to stderr at exit with $SVLAUNCH_STARTUP_TRACE set
#: (``bench/engine_startup.py`` passes its spawn time there to get exec -> phase numbers).
MARKS: list[tuple[str, float]] = [("interpreter up, engine/__main__ running", T0)]


def mark(phase: str) -> None:
    MARKS.append((phase, time.monotonic()))


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
    """The process entry point: start-up tuning, then ``main``.

    The start-up path imports none of ``dataclasses``/``inspect`` (``launcher.frozen``),
    ``json`` (the plan uses its C scanner), ``logging`` (``engine.logsetup.get_logger``) or
    ``signal``'s enums (``_signal``): ``tests/test_imports.py`` holds it to that.
    """
    gc.disable()  # start-up allocates many long-lived objects: collect once the guest runs
    try:
        return main(argv)
    finally:
        gc.enable()


def engine_argv(plan_file: str, *args: str, python: str | None = None) -> list[str]:
    """The fastest-starting argv for the engine (the launcher and the sandbox should use it).

    Built in the launcher's process, whose ``sys.path`` knows where the project and its
    third-party packages (cffi, pyseccomp, pyroute2) live; the engine skips ``site``.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [root]
    for p in sys.path:
        if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p) and p not in paths:
            paths.append(p)
    code = (
        f"import sys; sys.path[:0] = {paths!r}; from engine.__main__ import boot; sys.exit(boot())"
    )
    return [python or sys.executable, "-I", "-S", "-c", code, "run", "--plan", plan_file, *args]


def _progress(done: int, total: int) -> None:
    if total >= 1 << 30 and sys.stderr.isatty():
        pct = done * 100 // total
        sys.stderr.write(f"\rpreallocating guest RAM: {pct:3d}% ({done >> 20}/{total >> 20} MiB)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run(plan_path: str, *, paused: bool, verbose: bool) -> int:
    from launcher.compile.plan import Plan
    from launcher.errors import SvlaunchError

    try:
        with open(plan_path) as f:
            plan = Plan.loads(f.read())
        mark("plan read (launcher.compile.plan imported)")
    except OSError as e:
        print(f"engine: cannot read plan {plan_path}: {e.strerror}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as e:
        print(f"engine: {plan_path}: not a valid engine plan: {e}", file=sys.stderr)
        return 1
    from engine.logsetup import apply_logging, configure_logging

    configure_logging(plan.log, plan.log_file, verbose, lazy=True)  # applied at the first log
    paused = paused or plan.paused

    import _signal  # signal's C core: the signal module's enums cost ~4 ms of start-up

    from engine.vm import Vm

    mark("engine modules imported")

    seccomp: Any = None
    if plan.seccomp or os.environ.get("SVLAUNCH_SECCOMP_MEASURE"):
        from engine import seccomp

    def thread_init() -> None:
        seccomp.install("vcpu", enabled=plan.seccomp)

    vm = Vm(plan, progress=_progress, thread_init=thread_init if seccomp else None)
    server = None
    try:
        vm.start(paused=True)
        mark("VM built (vCPUs parked)")
        assert vm.machine is not None
        _signal.signal(_signal.SIGTERM, lambda *_: vm.quit())
        _signal.signal(_signal.SIGINT, lambda *_: vm.quit())
        if not paused:
            # Enter the guest now: QMP, the pidfile and logging come up while it runs (no
            # client can be connected before the QMP socket exists, so no event is lost).
            vm.resume()
            mark("vCPUs resumed")
            gc.enable()
        if plan.log or verbose or "logging" in sys.modules:  # -D on, or a module logs for real
            apply_logging()
        if plan.pidfile:
            with open(plan.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        if plan.qmp:
            from engine.qmp.server import QmpServer

            server = QmpServer(vm, plan.qmp, loop=vm.machine.loop)
            vm.sink = server
            server.start()
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
        if server is not None:
            server.close()
        _print_exit_profiles(vm)
        vm.close()
        if os.environ.get("SVLAUNCH_STARTUP_TRACE") is not None:
            if vm.first_run_at is not None:
                MARKS.append(("vCPUs first resumed (guest runs)", vm.first_run_at))
                MARKS.sort(key=lambda m: m[1])
            _print_marks()
        if plan.pidfile:
            try:
                os.unlink(plan.pidfile)
            except OSError:
                pass


def _print_exit_profiles(vm: Any) -> None:
    """``SVLAUNCH_EXIT_STATS=1``: each vCPU's exits and where their time went, on stderr."""
    m = vm.machine
    if m is None:
        return
    for v in m.vcpus:
        prof = v.ctx.profile
        if prof is not None:
            v.pause(timeout=1.0)
            sys.stderr.write("".join(f"exit-stats {line}\n" for line in prof.lines(v.index)))


def _parse_fast(argv: list[str]) -> tuple[str, bool, bool] | None:
    """``run --plan FILE [--paused] [-v]`` without argparse (~2 ms); None: let argparse speak."""
    if len(argv) < 3 or argv[0] != "run":
        return None
    plan, paused, verbose, i = None, False, False, 1
    while i < len(argv):
        a = argv[i]
        if a == "--plan" and i + 1 < len(argv) and plan is None:
            plan, i = argv[i + 1], i + 2
            continue
        if a.startswith("--plan=") and plan is None:
            plan = a[len("--plan=") :]
        elif a == "--paused":
            paused = True
        elif a in ("-v", "--verbose"):
            verbose = True
        else:
            return None
        i += 1
    return (plan, paused, verbose) if plan else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fast = _parse_fast(args)
    if fast is not None:
        return run(fast[0], paused=fast[1], verbose=fast[2])
    import argparse

    p = argparse.ArgumentParser(prog="python -m engine", description="svlaunch's KVM engine")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the VM of an engine plan")
    r.add_argument("--plan", required=True, help="plan JSON (from `svlaunch plan`)")
    r.add_argument("--paused", action="store_true", help="build the VM but do not start the vCPUs")
    r.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(args)
    return run(ns.plan, paused=ns.paused, verbose=ns.verbose)


if __name__ == "__main__":
    sys.exit(boot())

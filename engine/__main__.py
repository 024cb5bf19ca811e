"""The engine process: ``python -m engine run --plan FILE [--paused]`` (one process per VM).

Reads the plan, builds the VM (vCPUs paused), starts QMP on the plan's sockets, resumes unless
paused, and serves the main loop until the guest powers off or QMP quits. Exit codes: 0 when the
guest powered off/reset or QMP quit, 1 for a user-facing error (bad plan, host cannot run it) or
a fatal guest exit, 2 for an internal error (with a traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

T0 = time.monotonic()

log = logging.getLogger("engine")


def _setup_logging(plan_log: bool, log_file: str | None, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO if plan_log else logging.WARNING
    handler: logging.Handler
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


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
    except OSError as e:
        print(f"engine: cannot read plan {plan_path}: {e.strerror}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as e:
        print(f"engine: {plan_path}: not a valid engine plan: {e}", file=sys.stderr)
        return 1
    _setup_logging(plan.log, plan.log_file, verbose)
    paused = paused or plan.paused

    from engine import seccomp
    from engine.vm import Vm

    def thread_init() -> None:
        seccomp.install("vcpu", enabled=plan.seccomp)

    vm = Vm(plan, progress=_progress, thread_init=thread_init)
    server = None
    try:
        vm.start(paused=True)
        assert vm.machine is not None
        if plan.pidfile:
            with open(plan.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        if plan.qmp:
            from engine.qmp.server import QmpServer

            server = QmpServer(vm, plan.qmp, loop=vm.machine.loop)
            vm.sink = server
            server.start()
        for io in vm.machine.iothreads.values():
            io.loop.call_soon_threadsafe(lambda: seccomp.install("io", enabled=plan.seccomp))
        signal.signal(signal.SIGTERM, lambda *_: vm.quit())
        signal.signal(signal.SIGINT, lambda *_: vm.quit())
        log.info("VM %s built in %.1f ms", plan.name, (time.monotonic() - T0) * 1000)
        if not paused:
            vm.resume()
        seccomp.install("main", enabled=plan.seccomp)
        return vm.run()
    except SvlaunchError as e:
        print(f"engine: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if server is not None:
            server.close()
        vm.close()
        if plan.pidfile:
            try:
                os.unlink(plan.pidfile)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine", description="svlaunch's KVM engine")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the VM of an engine plan")
    r.add_argument("--plan", required=True, help="plan JSON (from `svlaunch plan`)")
    r.add_argument("--paused", action="store_true", help="build the VM but do not start the vCPUs")
    r.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    return run(args.plan, paused=args.paused, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())

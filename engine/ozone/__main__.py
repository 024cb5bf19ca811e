"""``python -m engine.ozone``: the sandbox supervisor (ozone for the builtin engine).

    python -m engine.ozone run --plan FILE [--state-dir DIR] [--keep] [-- ARGV...]
    python -m engine.ozone teardown --name NAME --exec EXEC [--state-dir DIR]

``run`` builds the jail from the plan's ozone section, starts the engine in it
(``python -m engine run --plan /plan.json``, or ARGV), forwards SIGTERM/SIGINT/SIGHUP to it,
reports how it ended (a seccomp kill is named), tears the sandbox down (jail, cgroups, socket
links; ``--keep`` leaves them to inspect), and exits with the engine's status (128+signal when
killed). ``--exit-fd N`` writes the exit record there (``engine.ending``): the status is the
supervisor's own, the cause the jailed engine's, which it reports over a pipe. So stopping the VM (``svlaunch down``) leaves nothing behind; a supervisor that was
killed leaves its state file, and the next ``run`` of that name cleans up first.
``teardown`` is ozone's ``-clean-resource``: it works from the state file alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from engine.errors import SvlaunchError
from engine.ozone.state import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.ozone.exits import Exit
    from engine.ozone.sandbox import Sandbox


def _run(args: argparse.Namespace) -> int:
    ended = None
    if args.exit_fd is not None:
        from engine import ending
        from engine.ozone.exits import exit_record

        def ended(end: Exit, report: dict[str, Any] | None) -> None:
            ending.write(args.exit_fd, exit_record(end, report))

    return supervise(
        args.plan, state_dir=args.state_dir, keep=args.keep, argv=args.argv or None, ended=ended
    )


def supervise(
    plan_path: str,
    *,
    state_dir: str = DEFAULT_STATE_DIR,
    keep: bool = False,
    argv: list[str] | None = None,
    sandbox_class: type[Sandbox] | None = None,
    ended: Callable[[Exit, dict[str, Any] | None], None] | None = None,
) -> int:
    """The supervisor's whole life (``run``; also what a VM forked by ``engine.pool`` runs,
    with its own ``sandbox_class``). ``ended`` gets how the engine ended and the exit record
    the jailed engine reported (None when it wrote none or a bad one)."""
    from engine.ozone.sandbox import Sandbox, clean_stale
    from engine.plan import Plan

    try:
        with open(plan_path) as f:
            plan = Plan.loads(f.read())
    except (OSError, ValueError) as e:
        raise SvlaunchError(f"cannot read plan {plan_path}: {e}") from None
    if plan.sandbox is not None:  # from_plan names a missing section
        exec_name = os.path.basename(plan.sandbox.exec_file.rstrip("/")) or "engine"
        if clean_stale(plan.sandbox.name, exec_name, state_dir):
            print(
                f"svlaunch: cleaned up after a crashed sandbox {plan.sandbox.name!r}",
                file=sys.stderr,
            )
    sandbox = (sandbox_class or Sandbox).from_plan(plan, state_dir=state_dir)
    for w in sandbox.spec.warnings:
        print(f"svlaunch: warning: {w}", file=sys.stderr)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)  # the jailed engine's exit record
    try:
        jailed = sandbox.realize(argv, exit_fd=None if argv else report_w)
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)

    def forward(sig: int, _frame: object) -> None:
        try:
            os.kill(jailed.pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    end = jailed.wait()
    report = _read_report(report_r)
    if end.code != 0:
        print(f"svlaunch: engine (pid {end.pid}) {end.reason}", file=sys.stderr)
    if not keep:
        try:
            sandbox.teardown()
        except SvlaunchError as e:  # the engine's status still matters more
            print(f"svlaunch: {e}", file=sys.stderr)
    if ended is not None:
        ended(end, report)
    return end.shell_status


def _read_report(fd: int) -> dict[str, Any] | None:
    """What the jailed engine wrote before it exited (bounded: it is the jail's word)."""
    from engine.ending import MAX_RECORD_BYTES, parse_record

    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) <= MAX_RECORD_BYTES:
            chunk = os.read(fd, MAX_RECORD_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except BlockingIOError:  # a descendant in the jail still holds the pipe open
        pass
    finally:
        os.close(fd)
    return parse_record(data)


def _teardown(args: argparse.Namespace) -> int:
    from engine.ozone.sandbox import teardown_named

    teardown_named(args.name, args.exec, args.state_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.ozone", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start the engine in its sandbox")
    run.add_argument("--plan", required=True)
    run.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    run.add_argument("--keep", action="store_true",
                     help="leave the jail and cgroups after the engine exits (to inspect them)")  # fmt: skip
    run.add_argument("--exit-fd", type=int, metavar="N",
                     help="write the exit record (JSON: how the VM ended) to this descriptor")  # fmt: skip
    run.add_argument("argv", nargs="*", help="payload instead of the engine (after --)")
    td = sub.add_parser("teardown", help="remove a sandbox's jail and cgroups (-clean-resource)")
    td.add_argument("--name", required=True)
    td.add_argument("--exec", required=True, help="the exec name (basename of the ozone exec_file)")
    td.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    args = p.parse_args(argv)
    try:
        return _run(args) if args.cmd == "run" else _teardown(args)
    except SvlaunchError as e:
        print(f"svlaunch: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    from engine.__main__ import crash_guard

    sys.exit(crash_guard(main, "svlaunch-ozone"))

"""live terminal UI for a VM or any QMP endpoint; without one, every VM of this host

Without a name: the fleet, one row per VM (state, uptime, vCPUs, memory, the source revision it
runs and whether it drifted from it), refreshed every second; Up/Down select, Enter opens that
VM's view (q there comes back), q quits. With a name (or --qmp): shows the VM's name, state, uptime, vCPUs, memory and balloon, a device table with live
statistics (builtin engine only; other QMP servers show a note instead), the QMP event log and
the tail of the serial console. Keys (shown on screen): p pause, r resume, o powerdown,
b reset (press twice), q detach (the VM keeps running). Talks QMP only, so it attaches to the
builtin engine, StratoVirt or QEMU alike. Exits 0 when you detach or the VM shuts down (a
SHUTDOWN event), 1 when the VM vanishes without one (its engine was killed).

examples:
  svlaunch top
  svlaunch top web1
  svlaunch top --qmp unix:/run/stratovirt/qmp.sock
  qemu-system-x86_64 -machine none -qmp unix:/tmp/q.sock,server,nowait -S &
  svlaunch top --qmp unix:/tmp/q.sock
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="VM name (see 'svlaunch ps')")
    parser.add_argument("--qmp", metavar="ADDRESS", help="attach to this QMP endpoint (unix:PATH)")
    parser.add_argument("--serial", metavar="PATH", help="serial console socket to tail")


def run(args: argparse.Namespace) -> int:
    from launcher.errors import EngineError, UsageError
    from launcher.tui_live import DETACHED, SHUTDOWN, require_terminal, run_tui

    if args.name and args.qmp:
        raise UsageError("give a VM name or --qmp ADDRESS, not both")
    require_terminal("top")
    if not args.name and not args.qmp:
        if args.serial:
            raise UsageError("--serial needs a VM name or --qmp")
        from launcher.tui_fleet import run_fleet

        return run_fleet()
    if args.qmp:
        outcome = run_tui(args.qmp, serial=args.serial)
        hint = "check the process that served this QMP socket"
    else:
        from launcher import runtime

        meta = runtime.find(args.name).meta()
        if meta is None:
            raise EngineError(f"VM {args.name!r} is still starting; try again in a moment")
        outcome = run_tui(meta.qmp, serial=args.serial or meta.serial, title=meta.name, meta=meta)
        hint = "its engine stopped without a SHUTDOWN event (killed or crashed); 'svlaunch ps'"
        hint += " clears what it left behind"
    name = outcome.view.name
    if outcome.how == DETACHED:
        print(f"{name}: detached; the VM keeps running")
        return 0
    if outcome.how == SHUTDOWN:
        print(f"{name}: the VM shut down")
        return 0
    raise EngineError(f"VM '{name}' is gone: {outcome.detail}", hint=hint)

"""snapshot a running VM to a folder (a template to restore or clone)

The friendly form of QMP `stop` + `migrate uri=file:DIR` + `query-migrate` (StratoVirt's
snapshot): the VM is paused, its RAM and device state are written to DIR (created; never
overwritten), and the VM is resumed if it was running (--leave-paused keeps it paused, as a
template usually is). Restore it with `svlaunch up --restore DIR MANIFEST`, or many clones of it
(docs/snapshot.md). --verify reads the memory file back and checks its SHA-256.

examples:
  svlaunch snapshot web1 /var/lib/svlaunch/tmpl/web
  svlaunch snapshot --leave-paused web1 ./tmpl && svlaunch down web1
  svlaunch up -d --restore ./tmpl web1.toml
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the VM's name")
    parser.add_argument("folder", help="where to write the snapshot (created; must not hold one)")
    parser.add_argument(
        "--leave-paused", action="store_true", help="keep the VM paused after the snapshot"
    )
    parser.add_argument(
        "--verify", action="store_true", help="read the memory file back and check its SHA-256"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the snapshot (default %(default)s)",
    )


def _refusals(meta: Any) -> list[str]:
    """What the engine would refuse, said before the VM is paused (engine.snapshot.rules)."""
    from engine.__main__ import read_plan
    from engine.snapshot.rules import snapshot_refusals

    if not meta.plan:
        return []
    try:
        plan = read_plan(meta.plan)
    except ValueError:
        return []  # the engine answers for itself
    reasons = snapshot_refusals(plan)
    if plan.sandbox is not None:
        reasons.append("its engine runs in a sandbox jail, which cannot see the snapshot folder")
    return reasons


def _wait(c: Any, timeout: float, folder: str) -> dict[str, Any]:
    from launcher.errors import EngineError

    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    while True:
        st = c.execute("query-migrate")
        status = st.get("status")
        if status == "completed":
            if tty:
                sys.stderr.write("\r\033[K")
            return st
        if status in ("failed", "cancelled"):
            raise EngineError(
                f"the snapshot to {folder} {status}: {st.get('error-desc', 'no reason given')}",
                hint="see the VM's engine log (svlaunch status NAME)",
            )
        if time.monotonic() > deadline:
            c.execute("migrate_cancel")
            raise EngineError(f"the snapshot to {folder} took longer than {timeout:g}s: cancelled")
        ram = st.get("ram") or {}
        if tty and ram.get("total"):
            pct = 100 * ram.get("transferred", 0) // ram["total"]
            sys.stderr.write(f"\rwriting guest RAM: {pct:3d}%")
            sys.stderr.flush()
        time.sleep(0.05)


def run(args: argparse.Namespace) -> int:
    from launcher import runtime
    from launcher.errors import EngineError, HostError
    from launcher.identity import connect

    folder = os.path.abspath(args.folder)  # the engine's working folder is not this one
    meta = runtime.find(args.name).meta()
    if meta is None:
        raise EngineError(f"VM {args.name!r} is still starting; try again in a moment")
    reasons = _refusals(meta)
    if reasons:
        raise HostError(
            f"VM {meta.name!r} cannot be snapshotted: " + "; ".join(reasons),
            hint="docs/snapshot.md lists what a snapshot cannot hold",
        )
    t0 = time.monotonic()
    with connect(meta, timeout=10.0) as c:
        was = c.execute("query-status").get("status")
        if was == "running":
            c.execute("stop")
        try:
            c.execute("migrate", {"uri": f"file:{folder}"})
            st = _wait(c, args.timeout, folder)
        finally:
            if was == "running" and not args.leave_paused:
                c.execute("cont")
    took = time.monotonic() - t0
    state = os.path.getsize(os.path.join(folder, "state"))
    mem = os.stat(os.path.join(folder, "memory"))
    ram = (st.get("ram") or {}).get("total", 0)
    print(
        f"{meta.name}: snapshot in {folder} ({ram >> 20} MiB of RAM, {mem.st_blocks * 512 >> 20} "
        f"MiB on disk, state {state >> 10} KiB) in {took:.2f}s"
        + ("; the VM is paused" if was == "running" and args.leave_paused else "")
    )
    if args.verify:
        _verify(folder)
        print(f"{meta.name}: memory file verified (SHA-256)")
    return 0


def _verify(folder: str) -> None:
    import base64

    from engine.snapshot import format as fmt

    state = fmt.read_state(folder)
    mem = state.payload["memory"]
    mf = fmt.open_memory(folder, base64.b64decode(mem["id"]), int(mem["size"]))
    try:
        fmt.verify_memory(mf)
    finally:
        mf.close()

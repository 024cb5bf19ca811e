"""stream a VM's QMP events

One line per event until the VM exits or Ctrl-C: "TIME EVENT DATA", or with --json one JSON
object per line (NDJSON) in QMP's own shape: {"event", "data", "timestamp": {seconds,
microseconds}}. NAME may also be a QMP address (unix:PATH).

examples:
  svlaunch events web1
  svlaunch events web1 --json | jq -c 'select(.event == "SHUTDOWN")'
  svlaunch events web1 --count 1 --timeout 30   # wait for one event
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="VM name, or a QMP address unix:PATH")
    parser.add_argument("--json", action="store_true", help="NDJSON output")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")


def run(args: argparse.Namespace) -> int:
    from launcher.commands.qmp import session
    from launcher.errors import HostError

    seen = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with session(args.name) as c:
        while not args.count or seen < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                ev = c.next_event(left)
            except HostError:
                return 0  # the VM went away: the stream simply ends
            if ev is None:
                break
            seen += 1
            if args.json:
                line = json.dumps(ev.to_wire(), separators=(",", ":"))
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.seconds))
                stamp += f".{ev.microseconds // 1000:03d}"
                line = f"{stamp} {ev.name} {json.dumps(ev.data) if ev.data else ''}".rstrip()
            print(line, flush=True)
    return 0 if not args.count or seen >= args.count else 1

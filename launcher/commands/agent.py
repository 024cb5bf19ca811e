"""keep this host running what SOURCE says (fetch, validate, apply, supervise)

Every --interval the agent fetches SOURCE, validates every manifest and applies the diff (as
'svlaunch apply --yes' would); a watched VM that ends is started again per its restart policy,
with exponential back-off (--backoff, doubling up to --backoff-cap). A revision that does not
validate is skipped and reported: the last good one keeps running. Stopping the agent (SIGTERM,
Ctrl-C) or killing it leaves every VM running; the next agent adopts them. SIGHUP: look now.
Events go to stdout, one JSON object per line. 'svlaunch agent status' prints what the running
agent last saw. 'svlaunch export systemd' writes its unit. docs/gitops.md.

examples:
  svlaunch agent https://git.example.com/vms.git#main --interval 30s
  svlaunch agent /srv/vms.git#prod --host web-01 --prune | jq -c 'select(.event != "look")'
  svlaunch agent status
  svlaunch agent status --json | jq .vms
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from launcher.errors import EXIT_INVALID, EXIT_OK, UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or plain seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30s, 5m, 1h, 250ms)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of manifests or URL[#REF] (git); 'status' prints the agent's status",
    )
    p.add_argument("--host", metavar="NAME", help="this host's name (default: the hostname)")
    p.add_argument("--interval", type=duration, default=30.0, help="between fetches (30s)")
    p.add_argument("--prune", action="store_true", help="destroy VMs removed from the source")
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="VMs at a time (4)")
    p.add_argument("--stop-timeout", type=duration, default=20.0, help="guest powerdown (20s)")
    p.add_argument("--backoff", type=duration, default=1.0, help="first restart delay (1s)")
    p.add_argument("--backoff-cap", type=duration, default=300.0, help="longest delay (5m)")
    p.add_argument("--fetch-timeout", type=duration, default=120.0, help="git fetch (120s)")
    p.add_argument("--json", action="store_true", help="status: print JSON")


def run(args: argparse.Namespace) -> int:
    if args.source == "status":
        return status(args.json)
    from launcher.gitops.agent import Agent
    from launcher.gitops.session import host_name
    from launcher.gitops.source import parse_source
    from launcher.gitops.supervise import Backoff

    if args.interval < 0.1 or args.parallel < 1 or args.backoff <= 0:
        raise UsageError("--interval must be at least 100ms, --parallel and --backoff positive")
    agent = Agent(
        parse_source(args.source),
        host_name(args.host),
        interval=args.interval,
        prune=args.prune,
        parallel=args.parallel,
        stop_timeout=args.stop_timeout,
        backoff=Backoff(args.backoff, max(args.backoff, args.backoff_cap)),
        fetch_timeout=args.fetch_timeout,
    )
    return agent.run()


def status(as_json: bool) -> int:
    from launcher.gitops.agent import agent_running, read_status
    from launcher.report import shown

    pid = agent_running()
    data: dict[str, Any] = read_status() or {}
    data["running"] = pid is not None
    if pid:
        data["pid"] = pid
    if as_json:
        print(json.dumps(data, indent=2))
        return EXIT_OK if pid else EXIT_INVALID
    if not data.get("source"):
        print("no agent has run with this runtime root")
        return EXIT_INVALID
    age = time.time() - float(data.get("updated", 0) or 0)
    print(f"agent     {'running, pid ' + str(pid) if pid else 'not running'}")
    print(f"host      {shown(str(data.get('host')))}")
    print(f"source    {shown(str(data.get('source')))} (every {data.get('interval')} s)")
    print(f"revision  {str(data.get('revision'))[:12] or '-'} (last good"
          f" {str(data.get('last_good'))[:12] or '-'})")  # fmt: skip
    print(f"result    {shown(str(data.get('result')))} ({age:.0f} s ago)"
          + (f": {shown(str(data.get('detail')))}" if data.get("detail") else ""))  # fmt: skip
    for line in data.get("errors") or []:
        print("  " + shown(str(line), lines=True).replace("\n", "\n  "))
    vms = data.get("vms") or {}
    if vms:
        width = max(len(n) for n in vms)
        for name, v in sorted(vms.items()):
            extra = f" (restarts {v.get('restarts')})" if v.get("restarts") else ""
            why = v.get("skip") or v.get("reason") or ""
            print(f"  {shown(name).ljust(width)}  {v.get('action', '?'):<12}{extra}"
                  + (f"  {shown(why)}" if why else ""))  # fmt: skip
    return EXIT_OK if pid else EXIT_INVALID

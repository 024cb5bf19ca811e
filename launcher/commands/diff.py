"""show what 'svlaunch apply SOURCE' would change on this host

SOURCE is a folder of manifests or a git repository (URL[#REF]; a local bare repository or
PATH#REF counts). Every manifest is validated; those whose 'hosts' name this host (--host,
default the hostname), or that name no hosts, are compared with what runs here and what svlaunch
recorded. Each VM gets one action: create, destroy (only VMs svlaunch created, only with
--prune), update-live (applied over QMP without a restart), restart, drift (dead, paused, or its
disks differ), unchanged; per field, the old and new value and how it applies. docs/gitops.md.

examples:
  svlaunch diff ~/vms                                  # a folder, this host
  svlaunch diff https://git.example.com/vms.git#main --host web-01
  svlaunch diff /srv/vms.git#prod --format json | jq '.rows[] | select(.action != "unchanged")'
  svlaunch diff /srv/vms.git --detailed-exitcode; echo $?   # 0 nothing to do, 2 changes, 1 error
  svlaunch diff /srv/vms.git --plan tonight.plan       # saved for 'svlaunch apply --plan'

exit codes: 0 ok (with --detailed-exitcode: no changes), 2 changes (--detailed-exitcode),
1 the source cannot be read or has an invalid manifest (nothing would be applied)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.errors import EXIT_INVALID, EXIT_OK

EXIT_CHANGES = 2


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every GitOps command takes."""
    p.add_argument("source", metavar="SOURCE", help="a folder of manifests, or URL[#REF] (git)")
    p.add_argument("--host", metavar="NAME", help="this host's name (default: the hostname)")
    p.add_argument(
        "--fetch-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a git fetch may take (default %(default)s)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("--prune", action="store_true", help="destroy VMs removed from the source")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when there are changes, 0 when there are none (1 on errors)",
    )
    p.add_argument("--plan", metavar="FILE", help="save the plan for 'svlaunch apply --plan FILE'")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def look(args: argparse.Namespace, *, prune: bool, clean: bool = False) -> Any:
    """Fetch, validate and diff (``launcher.gitops.session.look``) for a command's arguments."""
    from launcher.gitops.session import host_name
    from launcher.gitops.session import look as session_look
    from launcher.gitops.source import parse_source

    spec = parse_source(args.source)
    return session_look(
        spec, host_name(args.host), prune=prune, clean=clean, timeout=args.fetch_timeout
    )


def report_invalid(inputs: Any, fmt: str) -> int:
    """The source's errors, located; nothing is applied."""
    from launcher.report import Snippets, issue_to_json, print_issues, print_message

    d = inputs.desired
    if fmt == "json":
        import json

        files = [
            {"file": f, "issues": [issue_to_json(i) for i in issues]} for f, issues in d.results
        ]
        print(json.dumps({"valid": False, "errors": d.errors, "files": files}, indent=2))
    else:
        snippets = Snippets(d.texts)
        for _, issues in d.results:
            print_issues([i for i in issues if i.is_error], sys.stderr, snippets)
    print_message(
        f"svlaunch: {d.errors} error(s) in {inputs.spec.text} at"
        f" {d.snapshot.revision[:12]}: nothing is applied; running VMs keep running",
        sys.stderr,
    )
    return EXIT_INVALID


def save_plan(plan: Any, path: str) -> None:
    import json

    from launcher.commands import write_output

    write_output(json.dumps(plan.to_json(), indent=1) + "\n", path)


def run(args: argparse.Namespace) -> int:
    from launcher.gitops.render import plan_json, print_plan

    inputs = look(args, prune=args.prune)
    if inputs.plan is None:
        return report_invalid(inputs, args.format)
    plan = inputs.plan
    if inputs.state.note and args.format == "text":
        print(f"svlaunch: state: {inputs.state.note}", file=sys.stderr)
    if args.plan:
        save_plan(plan, args.plan)
    if args.format == "json":
        print(plan_json(plan))
    else:
        print_plan(plan, color=args.color)
    if args.detailed_exitcode and plan.changes:
        return EXIT_CHANGES
    return EXIT_OK

"""make this host run what SOURCE says (the diff of 'svlaunch diff', carried out)

Live changes go over QMP, restarts are a stop then a start, VMs start after those they
depend on (depends-on), --parallel at a time; one VM's failure does not stop the others and the
summary says what happened to each. If any manifest is invalid, or the source cannot be read,
nothing is destroyed or restarted. --prune destroys VMs that svlaunch created from this source
and that no manifest for this host names any more (never other VMs). docs/gitops.md.

examples:
  svlaunch apply ~/vms                         # asks before changing anything
  svlaunch apply /srv/vms.git#main --yes --prune
  svlaunch apply /srv/vms.git --dry-run        # the diff only
  svlaunch apply /srv/vms.git --dry-run --plan tonight.plan && svlaunch apply /srv/vms.git --plan tonight.plan
                                               # a saved plan is refused if the host or the source changed

exit codes: 0 every change applied (or none needed), 1 the source is invalid or a VM failed,
2 usage error
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launcher.errors import EXIT_INVALID, EXIT_OK, HostError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from launcher.commands.diff import add_source_arguments

    add_source_arguments(p)
    p.add_argument("--prune", action="store_true", help="destroy VMs removed from the source")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before applying")
    p.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    p.add_argument(
        "--plan",
        metavar="FILE",
        help="with --dry-run: save the plan; without: apply that saved plan",
    )
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="VMs at a time (4)")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds a guest gets to power off before a restart or destroy quits it (20)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def _saved(path: str) -> Any:
    from launcher.gitops.plan import Plan

    try:
        with open(path, encoding="utf-8") as f:
            return Plan.from_json(json.loads(f.read(1 << 26)))
    except OSError as exc:
        raise HostError(f"cannot read the plan {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(
            f"{path} is not a saved plan ({exc})",
            hint="save one with 'svlaunch apply SOURCE --dry-run --plan FILE'",
        ) from None


def _check_saved(saved: Any, plan: Any) -> None:
    """A saved plan is applied only to the host, source, revision and state it was made for."""
    for what, was, now in (
        ("host", saved.host, plan.host),
        ("source", saved.source, plan.source),
        ("revision", saved.revision, plan.revision),
    ):
        if was != now:
            raise HostError(
                f"the plan was made for {what} {was!r}; it is now {now!r}: not applied",
                hint="make a new plan (svlaunch apply SOURCE --dry-run --plan FILE)",
            )
    if saved.fingerprint != plan.fingerprint:
        raise HostError(
            "this host changed since the plan was saved (a VM started, stopped or changed):"
            " not applied",
            hint="make a new plan and look at it again",
        )


def _confirm(plan: Any) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(
            f"{len(plan.changes)} change(s) to apply and no terminal to ask",
            hint="add --yes to apply without asking (or --dry-run to look only)",
        )
    answer = input(f"apply {len(plan.changes)} change(s) on host {plan.host}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    from launcher.commands.diff import look, report_invalid, save_plan
    from launcher.gitops.render import plan_json, print_plan
    from launcher.gitops.session import apply_lock

    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    saved = _saved(args.plan) if args.plan and not args.dry_run else None
    prune = saved.prune if saved is not None else args.prune
    with apply_lock(wait=False):
        inputs = look(args, prune=prune, clean=not args.dry_run)
        if inputs.plan is None:
            return report_invalid(inputs, args.format)
        plan = inputs.plan
        if saved is not None:
            _check_saved(saved, plan)
        text = args.format == "text"
        if inputs.state.note and text:
            print(f"svlaunch: state: {inputs.state.note}", file=sys.stderr)
        if args.dry_run:
            if args.plan:
                save_plan(plan, args.plan)
            print(plan_json(plan) if not text else "", end="")
            if text:
                print_plan(plan, color=args.color)
            return EXIT_OK
        if text:
            print_plan(plan, color=args.color)
        if plan.changes and saved is None and not args.yes and not _confirm(plan):
            print("nothing applied")
            return EXIT_OK
        outcomes = _apply(inputs, args)
    failed = [o for o in outcomes if o.result in ("failed", "skipped")]
    if args.format == "json":
        print(json.dumps({"plan": plan.to_json(), "outcomes": [o.__dict__ for o in outcomes]}))
    else:
        _print_outcomes(outcomes)
    return EXIT_INVALID if failed else EXIT_OK


def _apply(inputs: Any, args: argparse.Namespace) -> list[Any]:
    from launcher.gitops.apply import Applier

    applier = Applier(inputs, parallel=args.parallel, stop_timeout=args.stop_timeout)
    return applier.run()


def _print_outcomes(outcomes: list[Any]) -> None:
    from launcher.report import shown

    shown_rows = [o for o in outcomes if o.detail != "recorded"]
    for o in shown_rows:
        print(
            f"  {o.result:<8} {shown(o.name)}: {o.action}"
            + (f": {shown(o.detail)}" if o.detail else "")
        )
    done = sum(1 for o in outcomes if o.result == "done" and o.detail != "recorded")
    bad = sum(1 for o in outcomes if o.result in ("failed", "skipped"))
    left = sum(1 for o in outcomes if o.result == "left")
    print(f"applied: {done} done, {bad} failed, {left} left by policy")

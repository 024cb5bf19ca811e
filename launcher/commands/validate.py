"""validate manifests (files or folders): every error, located, in one run

examples:
  svlaunch validate examples/quickstart.toml
  svlaunch validate manifests/                  # every *.toml, *.yaml, *.yml below
  svlaunch validate --format json vms/ | jq '.files[] | select(.valid | not)'
  svlaunch validate --target stratovirt vm.toml  # rules for a real StratoVirt (QMP required)
  svlaunch validate --strict vm.yaml             # warnings fail too
  svlaunch validate --inventory hosts.toml vms/  # CPUs and memory per host: over-commit

Each issue shows file:line:col, the key path, the rule code, the source line with a caret, and
a hint. Across the files, per host (the manifests' 'hosts'; absent: every host): unique VM
names, MACs, vsock CIDs, taps, socket paths and output files, and no disk writable by two VMs;
depends-on names VMs of the same host. A folder's .svlaunch/hosts.toml (or --inventory) lists
hosts' CPUs and memory: over-commit is a warning. Nothing on this host is touched (see
`svlaunch check` for host checks).
exit codes: 0 all valid, 1 something invalid, 2 usage error
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from launcher.errors import EXIT_INTERNAL, EXIT_INVALID, Issue, Mark
from launcher.report import MAX_ISSUES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or folders")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, no summary")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument(
        "--target",
        choices=("engine", "stratovirt"),
        default="engine",
        help="engine (svlaunch up, default) or stratovirt (svlaunch cmdline) rules",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="rich summary table on terminals (auto)",
    )
    p.add_argument(
        "--inventory",
        metavar="FILE",
        help="host inventory (default: .svlaunch/hosts.toml in a folder given)",
    )
    p.add_argument(
        "--max-issues",
        type=int,
        default=MAX_ISSUES,
        metavar="N",
        help=f"show at most N issues per file, 0 for all (default {MAX_ISSUES})",
    )


MANIFEST_SUFFIXES = (".toml", ".yaml", ".yml")


def collect(paths: list[str]) -> tuple[list[str], list[Issue]]:
    """Files named, plus every manifest below each folder (sorted, hidden folders skipped);
    and an issue for each folder that cannot be listed.

    The walk is iterative (no recursion limit for a deep tree), never follows a symlink to a
    folder (no loops), and keeps every entry named like a manifest whatever its type: reading
    it refuses a FIFO, socket or device with the reason instead of skipping it in silence.
    """
    out: list[str] = []
    problems: list[Issue] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found: list[str] = []
        stack = [path]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                problems.append(
                    Issue(
                        f"cannot list the folder: {exc.strerror}",
                        mark=Mark(folder),
                        code="file-unreadable",
                        hint="check its permissions",
                    )
                )
                continue
            for entry in reversed(entries):
                if entry.name.startswith("."):
                    continue
                if _is_dir(entry):
                    stack.append(entry.path)
                elif entry.name.endswith(MANIFEST_SUFFIXES):
                    found.append(entry.path)
        out += sorted(found)
    return out, problems


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def validate_files(
    files: list[str], target: str = "engine", strict: bool = False
) -> list[tuple[str, list[Issue]]]:
    """(file, issues) for each file, with the rules across files checked per host."""
    return _validate(files, target, strict)[0]


def _validate(
    files: list[str], target: str, strict: bool, inventory: str | None = None
) -> tuple[list[tuple[str, list[Issue]]], int]:
    """``validate_files`` and how many files crashed svlaunch: one file's bug never stops the
    rest (it is reported with its traceback and makes the exit code 3)."""
    from launcher.manifest.load import load_file_full

    results: list[tuple[str, list[Issue]]] = []
    loaded: list[tuple[str, Any, Any]] = []  # (file, manifest, source map)
    crashed = 0
    for f in files:
        try:
            r = load_file_full(f, target=target)
        except Exception:
            from launcher.cli import report_internal_error

            report_internal_error(["validate", f])
            crashed += 1
            results.append((f, [_crash_issue(f)]))
            continue
        issues = _strict(r.issues, strict)
        if r.manifest is not None:
            loaded.append((f, r.manifest, r.smap))
        results.append((f, issues))
    results = _across(results, loaded, inventory, strict)
    return results, crashed


def _across(
    results: list[tuple[str, list[Issue]]],
    loaded: list[tuple[str, Any, Any]],
    inventory: str | None,
    strict: bool,
) -> list[tuple[str, list[Issue]]]:
    """The rules across manifests, per host, and the inventory's (``launcher.gitops``)."""
    if not loaded and inventory is None:
        return results
    from launcher.gitops.inventory import check_inventory, cross_check, facts

    items = [(f, facts(man)) for f, man, _ in loaded]
    smaps = {f: smap for f, _, smap in loaded}
    extra: dict[str, list[Issue]] = dict(cross_check(items))
    if inventory is not None:
        inv = _inventory(inventory)
        own, per_file = check_inventory(inv, items) if not inv.issues else ([], {})
        for f, issues in per_file.items():
            extra.setdefault(f, []).extend(issues)
        results = [*results, (inventory, [*inv.issues, *_strict(own, strict)])]
    out = []
    for f, issues in results:
        more = extra.get(f, [])
        if more and f in smaps:
            more = smaps[f].locate(more)
        out.append((f, [*issues, *_strict(more, strict)]))
    return out


def _strict(issues: list[Issue], strict: bool) -> list[Issue]:
    if not strict:
        return issues
    return [Issue(i.message, i.path, i.hint, i.mark, "error", i.code) for i in issues]


def _inventory(path: str) -> Any:
    from launcher.gitops.inventory import Inventory, load_inventory
    from launcher.manifest.load import read_source

    text, issues = read_source(path)
    if text is None:
        return Inventory(path, issues=issues)
    return load_inventory(text, path)


def _crash_issue(file: str) -> Issue:
    return Issue(
        "svlaunch failed on this file (a bug in svlaunch, not in the file)",
        mark=Mark(file),
        code="internal-error",
        hint="please report it with the traceback printed above",
    )


def run(args: argparse.Namespace) -> int:
    from launcher.report import print_issues, print_message

    files, problems = collect(args.paths)
    if problems:
        print_issues(problems, sys.stderr)
    if not files:
        print_message(
            "svlaunch: no manifests (*.toml, *.yaml, *.yml) found in " + ", ".join(args.paths)
        )
        return EXIT_INVALID
    inventory = args.inventory or next(
        (
            os.path.join(p, ".svlaunch", "hosts.toml")
            for p in args.paths
            if os.path.isfile(os.path.join(p, ".svlaunch", "hosts.toml"))
        ),
        None,
    )
    results, crashed = _validate(files, args.target, args.strict, inventory)
    invalid = sum(1 for _, iss in results if any(i.is_error for i in iss))
    status = EXIT_INTERNAL if crashed else EXIT_INVALID if invalid or problems else 0
    if args.format == "json":
        from launcher.report import json_report

        print(json_report(results, args.max_issues))
        return status
    from launcher.report import Snippets, summary_line

    snippets = Snippets()
    more = "--max-issues 0 shows them all"
    for _, issues in results:
        listed = [i for i in issues if i.is_error] if args.quiet else issues
        print_issues(listed, sys.stderr, snippets, args.max_issues, more)
    if not args.quiet:
        errors = sum(1 for _, iss in results for i in iss if i.is_error)
        warnings = sum(1 for _, iss in results for i in iss if not i.is_error)
        tty = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
        if tty and len(results) > 1:
            from launcher.report import print_rich_summary

            print_rich_summary(results, sys.stdout)
        print(summary_line(len(files), invalid, errors, warnings))
    return status

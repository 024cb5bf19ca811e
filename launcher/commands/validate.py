"""validate manifests (files or folders): every error, located, in one run

examples:
  svlaunch validate examples/quickstart.toml
  svlaunch validate manifests/                  # every *.toml, *.yaml, *.yml below
  svlaunch validate --format json vms/ | jq '.files[] | select(.valid | not)'
  svlaunch validate --target stratovirt vm.toml  # rules for a real StratoVirt (QMP required)
  svlaunch validate --strict vm.yaml             # warnings fail too

Each issue shows file:line:col, the key path, the rule code, the source line with a caret, and
a hint. Nothing on this host is touched (see `svlaunch check` for host checks).
exit codes: 0 all valid, 1 something invalid, 2 usage error
"""

from __future__ import annotations

import argparse
import os
import sys

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
    """(file, issues) for each file, with VM names checked across the whole run."""
    return _validate(files, target, strict)[0]


def _validate(
    files: list[str], target: str, strict: bool
) -> tuple[list[tuple[str, list[Issue]]], int]:
    """``validate_files`` and how many files crashed svlaunch: one file's bug never stops the
    rest (it is reported with its traceback and makes the exit code 3)."""
    from launcher.manifest.load import load_file_full

    results: list[tuple[str, list[Issue]]] = []
    names: dict[str, str] = {}
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
        issues = r.issues
        if strict:
            issues = [Issue(i.message, i.path, i.hint, i.mark, "error", i.code) for i in issues]
        if r.manifest is not None:
            name = r.manifest.name
            if name in names:
                issue = Issue(
                    f"VM name {name!r} is also used by {names[name]}",
                    "name",
                    "give every VM its own name",
                    code="vm-name-duplicate",
                )
                issues = [*issues, *r.smap.locate([issue])]
            else:
                names[name] = f
        results.append((f, issues))
    return results, crashed


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
    results, crashed = _validate(files, args.target, args.strict)
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
        print(summary_line(len(results), invalid, errors, warnings))
    return status

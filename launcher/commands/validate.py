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

from launcher.errors import EXIT_INVALID, Issue


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


def collect(paths: list[str]) -> list[str]:
    """Files named, plus every manifest below each folder (sorted, hidden folders skipped)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    os.path.join(root, f) for f in files if f.endswith((".toml", ".yaml", ".yml"))
                ]
            out += sorted(found)
        else:
            out.append(path)
    return out


def validate_files(
    files: list[str], target: str = "engine", strict: bool = False
) -> list[tuple[str, list[Issue]]]:
    """(file, issues) for each file, with VM names checked across the whole run."""
    from launcher.manifest.load import load_file_full

    results: list[tuple[str, list[Issue]]] = []
    names: dict[str, str] = {}
    for f in files:
        r = load_file_full(f, target=target)
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
    return results


def run(args: argparse.Namespace) -> int:
    files = collect(args.paths)
    if not files:
        print(
            "svlaunch: no manifests (*.toml, *.yaml, *.yml) found in " + ", ".join(args.paths),
            file=sys.stderr,
        )
        return EXIT_INVALID
    results = validate_files(files, args.target, args.strict)
    invalid = sum(1 for _, iss in results if any(i.is_error for i in iss))
    if args.format == "json":
        from launcher.report import json_report

        print(json_report(results))
        return EXIT_INVALID if invalid else 0
    from launcher.report import Snippets, print_issues, summary_line

    snippets = Snippets()
    for _, issues in results:
        shown = [i for i in issues if i.is_error] if args.quiet else issues
        print_issues(shown, sys.stderr, snippets)
    if not args.quiet:
        errors = sum(1 for _, iss in results for i in iss if i.is_error)
        warnings = sum(1 for _, iss in results for i in iss if not i.is_error)
        tty = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
        if tty and len(results) > 1:
            from launcher.report import print_rich_summary

            print_rich_summary(results, sys.stdout)
        print(summary_line(len(results), invalid, errors, warnings))
    return EXIT_INVALID if invalid else 0

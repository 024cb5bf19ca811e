"""print the StratoVirt v2.2 command line for a manifest (canonical order, diff-friendly)

examples:
  svlaunch cmdline vm.toml              # one argument per line, program name first
  svlaunch cmdline --shell vm.toml      # one shell-quoted line, ready to run
  svlaunch cmdline --json vm.toml       # a JSON array
  svlaunch cmdline --ozone vm.toml      # ozone ... -- <StratoVirt argv with jail paths ./name>
  svlaunch cmdline --program /usr/bin/stratovirt --shell vm.toml

The order is canonical (the same manifest always prints the same lines) and satisfies
StratoVirt's own ordering rules; `svlaunch import` reads it back to the same manifest.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="manifest (*.toml, *.yaml)")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--shell", action="store_true", help="one shell-quoted line")
    style.add_argument("--json", action="store_true", help="a JSON array of strings")
    parser.add_argument(
        "--ozone", action="store_true", help="the ozone invocation wrapping StratoVirt"
    )
    parser.add_argument(
        "--program",
        metavar="PATH",
        help="program name printed first (default: stratovirt, or ozone with --ozone)",
    )
    parser.add_argument("--no-program", action="store_true", help="print the arguments only")


def render(argv: list[str], shell: bool = False, as_json: bool = False) -> str:
    if as_json:
        import json

        return json.dumps(argv, indent=None)
    if shell:
        import shlex

        return shlex.join(argv)
    return "\n".join(argv)


def run(args: argparse.Namespace) -> int:
    from launcher.manifest import load_manifest

    warnings: list = []
    manifest = load_manifest(args.file, target="stratovirt", warnings=warnings)
    if warnings:
        from launcher.report import print_issues

        print_issues(warnings, sys.stderr)
    if args.ozone:
        from launcher.compile.stratovirt.ozone import emit_ozone

        argv, program = emit_ozone(manifest), "ozone"
    else:
        from launcher.compile.stratovirt.emit import emit_argv

        argv, program = emit_argv(manifest), "stratovirt"
    if not args.no_program:
        argv = [args.program or program, *argv]
    print(render(argv, args.shell, args.json))
    return 0

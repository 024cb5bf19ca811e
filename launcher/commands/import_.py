"""turn a StratoVirt v2.2 (or ozone) argv into a manifest

examples:
  svlaunch import -- -machine microvm -m 512M -kernel /boot/vmlinux -append console=ttyS0 \
      -drive id=root,file=/img/root.ext4 -device virtio-blk-device,id=root,drive=root \
      -qmp unix:/run/vm.qmp,server,nowait -serial stdio
  svlaunch import -o vm.toml -- /usr/bin/stratovirt -name vm ...    # program path accepted
  svlaunch import --format yaml -- $(cat vm.argv)
  svlaunch import --ozone -- -name vm -exec-file /usr/bin/stratovirt -uid 100 -gid 100 \
      -source /img/vmlinux -- -kernel ./vmlinux ...

Accepts exactly what StratoVirt v2.2 (x86_64) or ozone accepts; anything else is an error at
argv:N:C (N-th argument after '--', C-th character in it), exit 1. What StratoVirt accepts but
ignores is dropped with a warning. Relative paths are relative to --base-dir (default: here).
"""

from __future__ import annotations

import argparse
import os
import sys

from launcher.commands import write_output
from launcher.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("toml", "yaml"), help="default: from -o, else toml")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument(
        "--ozone", action="store_true", help="the argv is OZONE_ARGS -- STRATOVIRT_ARGS"
    )
    parser.add_argument(
        "--base-dir", metavar="DIR", default=".", help="folder relative argv paths start from"
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="'--' then the arguments")


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output and args.output.endswith((".yaml", ".yml")):
        return "yaml"
    return "toml"


def _check_text(argv: list[str], base_dir: str) -> None:
    """Refuse what no manifest can hold: bytes that are not UTF-8 (the shell passes them as they
    are; Python stands each in for a lone surrogate) and control characters."""
    from launcher.compile.stratovirt.props import argv_issue
    from launcher.errors import InvalidInput
    from launcher.manifest.plain import control_in

    issues = []
    for index, arg in enumerate(argv, start=1):
        bad = next((n for n, c in enumerate(arg) if 0xD800 <= ord(c) <= 0xDFFF), None)
        if bad is not None:
            byte = ord(arg[bad]) - 0xDC00
            issues.append(
                argv_issue(
                    f"the argument is not UTF-8 text (byte {byte:#04x})",
                    index,
                    bad + 1,
                    "a manifest is UTF-8: rename the file or fix the argument",
                )
            )
        elif found := control_in(arg):
            issues.append(
                argv_issue(
                    f"the argument holds {found[1]}",
                    index,
                    found[0],
                    "remove it: a manifest holds no control characters",
                )
            )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in base_dir):
        raise UsageError(
            f"--base-dir {base_dir} is not UTF-8 text",
            hint="relative paths resolve against it: rename the folder or use another one",
        )
    if issues:
        raise InvalidInput(issues)


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError(
            "nothing to import",
            hint="give the arguments after '--': svlaunch import -- -m 512M ...",
        )
    _check_text(argv, args.base_dir)
    if args.ozone:
        from launcher.compile.stratovirt.ozone import import_ozone

        result = import_ozone(argv, base_dir=args.base_dir)
    else:
        from launcher.compile.stratovirt.importer import import_argv

        result = import_argv(argv, base_dir=args.base_dir)
    if result.warnings:
        from launcher.report import print_issues

        print_issues(result.warnings, sys.stderr)
    from launcher.manifest import dump_manifest

    # A file gets paths relative to its folder (as manifests resolve them); stdout absolute ones.
    out_dir = os.path.dirname(os.path.abspath(args.output)) if args.output else "/"
    text = dump_manifest(result.manifest, _format(args), out_dir)
    write_output(text, args.output)
    return 0

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


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError(
            "nothing to import",
            hint="give the arguments after '--': svlaunch import -- -m 512M ...",
        )
    if args.ozone:
        from launcher.compile.stratovirt.ozone import import_ozone

        result = import_ozone(argv, base_dir=args.base_dir)
    else:
        from launcher.compile.stratovirt.importer import import_argv

        result = import_argv(argv, base_dir=args.base_dir)
    for issue in result.warnings:
        print(str(issue), file=sys.stderr)
    from launcher.manifest import dump_manifest

    # A file gets paths relative to its folder (as manifests resolve them); stdout absolute ones.
    out_dir = os.path.dirname(os.path.abspath(args.output)) if args.output else "/"
    text = dump_manifest(result.manifest, _format(args), out_dir)
    write_output(text, args.output)
    return 0

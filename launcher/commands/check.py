"""check that this host can run a manifest (files, taps, hugepages, NUMA, /dev/kvm, vhost)

examples:
  svlaunch check examples/quickstart.toml
  svlaunch check --format json vm.toml

First validates the manifest like `svlaunch validate`, then probes the host: kernel, initrd,
images and firmware readable (writable unless read-only), taps present or creatable,
memory.path on hugetlbfs, host NUMA nodes present, /dev/kvm usable, vhost devices present.
exit codes: 0 ready, 1 invalid manifest or host problem, 2 usage error
"""

from __future__ import annotations

import argparse
import sys

from launcher.errors import EXIT_INVALID


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", metavar="FILE", help="manifest file (.toml, .yaml, .yml)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--target",
        choices=("engine", "stratovirt"),
        default="engine",
        help="engine (svlaunch up, default) or stratovirt (the svlaunch cmdline argv)",
    )


def run(args: argparse.Namespace) -> int:
    from launcher.manifest.load import load_file_full

    r = load_file_full(args.manifest, target=args.target)
    issues = list(r.issues)
    if r.manifest is not None:
        from launcher.validate.host import check_host

        issues += r.smap.locate(check_host(r.manifest, target=args.target))
    bad = any(i.is_error for i in issues)
    if args.format == "json":
        from launcher.report import json_report

        print(json_report([(args.manifest, issues)]))
    else:
        from launcher.report import print_issues, shown

        more = "svlaunch validate --max-issues 0 FILE shows them all"
        print_issues(issues, sys.stderr, more_hint=more)
        print(f"{shown(args.manifest)}: " + ("host cannot run it" if bad else "ready to run"))
    return EXIT_INVALID if bad else 0

"""print the manifest JSON Schema (draft 2020-12) for editors and CI

examples:
  svlaunch schema > svlaunch.schema.json
  # TOML (taplo / Even Better TOML): first line of the manifest
  #:schema ./svlaunch.schema.json
  # YAML (yaml-language-server): first line of the manifest
  # yaml-language-server: $schema=./svlaunch.schema.json
"""

from __future__ import annotations

import argparse

from launcher.commands import write_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from launcher.manifest.schemagen import schema_json

    text = schema_json()
    write_output(text, args.output)
    return 0

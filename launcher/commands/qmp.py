"""send one QMP command to a VM

Arguments are key=value pairs: a value that parses as JSON (numbers, true/false, null, objects)
is taken as JSON, anything else as a string; dotted keys nest (file.filename=/x gives
{"file": {"filename": "/x"}}). --args takes the whole arguments object as JSON instead.
NAME may also be a QMP address (unix:/path/to/qmp.sock), for StratoVirt or QEMU.

examples:
  svlaunch qmp web1 query-status
  svlaunch qmp web1 stop
  svlaunch qmp web1 balloon value=536870912
  svlaunch qmp web1 blockdev-add node-name=drive-0 file.driver=file file.filename=/tmp/d.img
  svlaunch qmp web1 device_add id=drive-0 driver=virtio-blk-mmio addr=0x1
  svlaunch qmp unix:/tmp/qemu.sock query-commands
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.qmpclient import QmpClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="VM name, or a QMP address unix:PATH")
    parser.add_argument("command", help="QMP command, e.g. query-status")
    parser.add_argument("pairs", nargs="*", metavar="key=value", help="command arguments")
    parser.add_argument("--args", help="arguments as one JSON object")


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    from launcher.errors import UsageError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {pair!r} is not key=value", hint="e.g. value=536870912")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise UsageError(f"argument {pair!r}: '{p}' is both a value and an object")
            node = child
        node[leaf] = value
    return out


def session(name: str, timeout: float = 5.0) -> QmpClient:
    """A QMP session with VM ``name`` (its own engine: listener pid and name checked), or with
    the endpoint ``name`` when it is a QMP address."""
    from launcher.qmpclient import QmpClient

    if name.startswith("unix:") or "/" in name:
        return QmpClient.connect(name, timeout=timeout)
    from launcher import runtime
    from launcher.errors import EngineError
    from launcher.identity import connect

    meta = runtime.find(name).meta()
    if meta is None:
        raise EngineError(f"VM {name!r} is still starting; try again in a moment")
    return connect(meta, timeout=timeout)


def run(args: argparse.Namespace) -> int:
    from launcher.errors import UsageError

    if args.args is not None:
        if args.pairs:
            raise UsageError("give either --args or key=value pairs, not both")
        try:
            arguments = json.loads(args.args)
        except ValueError as exc:
            raise UsageError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise UsageError("--args must be a JSON object")
    else:
        arguments = parse_pairs(args.pairs)
    with session(args.name) as c:
        result = c.execute(args.command, arguments)
    print(json.dumps(result, indent=2))
    return 0

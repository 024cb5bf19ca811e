"""The ``svlaunch`` command: a lazy command registry and the single error boundary.

Start-up cost matters (``svlaunch cmdline`` runs in CI loops), so this module imports only the
standard library. Each subcommand lives in ``launcher/commands/<name>.py`` and is imported only
when chosen; it provides ``add_arguments(parser)`` and ``run(args) -> int`` and a module
docstring whose first line is its summary and whose remainder (the examples) becomes the epilog.

Exit codes: 0 success; 1 invalid input (manifest, argv, host state); 2 usage error;
3 internal error (a bug: the traceback is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import NoReturn

from launcher.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, SvlaunchError


class CommandInfo:
    """A subcommand: the module that implements it and its one-line summary."""

    __slots__ = ("module", "summary")

    def __init__(self, module: str, summary: str) -> None:
        self.module = module
        self.summary = summary


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text laid out as written: the examples stay as they are."""


class Parser(argparse.ArgumentParser):
    """argparse, with the user's words in its error messages escaped (they quote argv)."""

    def error(self, message: str) -> NoReturn:
        from launcher.report import shown

        super().error(shown(message))


COMMANDS: dict[str, CommandInfo] = {
    "validate": CommandInfo("launcher.commands.validate", "validate manifests (files or folders)"),
    "check": CommandInfo("launcher.commands.check", "check that this host can run a manifest"),
    "cmdline": CommandInfo("launcher.commands.cmdline", "print the StratoVirt command line"),
    "import": CommandInfo(
        "launcher.commands.import_", "turn a StratoVirt/ozone argv into a manifest"
    ),
    "plan": CommandInfo("launcher.commands.plan", "print the engine plan (JSON)"),
    "schema": CommandInfo("launcher.commands.schema", "print the manifest JSON Schema"),
    "up": CommandInfo("launcher.commands.up", "run a VM with the builtin engine"),
    "down": CommandInfo("launcher.commands.down", "stop a running VM"),
    "ps": CommandInfo("launcher.commands.ps", "list VMs on this host"),
    "status": CommandInfo("launcher.commands.status", "show one VM's state"),
    "console": CommandInfo("launcher.commands.console", "attach to a VM's serial console"),
    "qmp": CommandInfo("launcher.commands.qmp", "send one QMP command to a VM"),
    "events": CommandInfo("launcher.commands.events", "stream a VM's QMP events"),
    "top": CommandInfo("launcher.commands.top", "live terminal UI for a VM or any QMP endpoint"),
    "pool": CommandInfo("launcher.commands.pool", "start, inspect or stop the engine pool"),
    "diff": CommandInfo("launcher.commands.diff", "show what 'apply SOURCE' would change here"),
    "apply": CommandInfo("launcher.commands.apply", "make this host run what SOURCE says"),
    "agent": CommandInfo("launcher.commands.agent", "keep this host running what SOURCE says"),
    "export": CommandInfo("launcher.commands.export", "write systemd units (agent, one VM)"),
    "snapshot": CommandInfo("launcher.commands.snapshot", "snapshot a running VM to a folder"),
}

TOP_EPILOG = """\
examples:
  svlaunch validate manifests/              # every *.toml/*.yaml below, exit 1 if any is invalid
  svlaunch cmdline examples/quickstart.toml # the StratoVirt argv, one argument per line
  svlaunch up examples/quickstart.toml      # boot it with the builtin KVM engine
  svlaunch import -- -machine microvm -m 512M -kernel vmlinux ...   # argv -> manifest

exit codes: 0 ok, 1 invalid input, 2 usage error, 3 internal error (please report it)
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("svlaunch")
    except Exception:
        return "unknown"


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    listing = "\n".join(f"  {n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items())
    p = Parser(
        prog="svlaunch",
        description="Declarative launcher for StratoVirt-style microVMs.\n\ncommands:\n" + listing,
        epilog=TOP_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    p.add_argument("--version", action="version", version=f"svlaunch {_version()}")
    p.add_argument("command", nargs="?", help="one of the commands above")
    return p


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, COMMANDS, n=1)
    return f"did you mean '{close[0]}'?" if close else "run 'svlaunch --help' for the list"


def build_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    """The parser for one subcommand, importing only that command's module."""
    info = COMMANDS[name]
    module = importlib.import_module(info.module)
    doc = (module.__doc__ or info.summary).strip()
    summary, _, rest = doc.partition("\n")
    parser = Parser(
        prog=f"svlaunch {name}",
        description=summary,
        epilog=rest.strip() or None,
        formatter_class=Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    module.add_arguments(parser)
    return parser, module


def _split_global(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Global flags before the command, the command, and the command's own arguments."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return argv[:i], arg, argv[i + 1 :]
        if arg == "--":
            break
    return argv, None, []


def main(argv: list[str] | None = None) -> int:
    """Run one command. ``argv=None`` means this is the program (the console script or
    ``python -m launcher.cli``): then the process ends right after, see ``_exiting``."""
    if argv is not None:
        return _main(list(argv))
    try:
        return _main(sys.argv[1:])
    finally:
        _exiting()


def _exiting() -> None:
    """Skip the garbage collector's passes over every live object at interpreter exit.

    Finalization runs full collections over the ~15,000 objects a run leaves (schema, model
    classes, argparse...): several ms of ``svlaunch cmdline`` (docs/performance.md). Freezing
    moves them out of the collector's sight; they are still freed by reference counting as
    modules are torn down, and the kernel reclaims the rest. Only for a process that is about to exit: tests
    that call ``main([...])`` in-process keep a normal collector.
    """
    import gc

    gc.freeze()


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv or os.environ.get("SVLAUNCH_DEBUG") == "1"
    head, name, rest = _split_global(argv)
    if name is None:
        top = _top_parser()
        top.parse_args(head)  # handles --help/--version, rejects unknown flags (exit 2)
        top.print_help(sys.stderr)
        return EXIT_USAGE
    if name not in COMMANDS:
        from launcher.report import print_message

        print_message(f"svlaunch: unknown command '{name}': {_suggest(name)}")
        return EXIT_USAGE
    try:
        parser, module = build_parser(name)
        args = parser.parse_args([a for a in head if a != "--debug"] + rest)
        return int(module.run(args) or 0)
    except SvlaunchError as exc:
        if debug:
            _print_traceback()
        from launcher.report import print_error

        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("svlaunch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` or similar: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except SystemExit:
        raise
    except Exception:
        report_internal_error(argv)
        print(
            "svlaunch: internal error (a bug in svlaunch, not in your input); "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def report_internal_error(argv: list[str]) -> None:
    """The exception being handled is a bug: print its traceback (escaped) and record it."""
    import traceback

    from engine.errors import record_crash

    _print_traceback()
    record_crash("svlaunch", argv, traceback.format_exc())


def _print_traceback() -> None:
    """The exception being handled, escaped: its message may quote user text."""
    import traceback

    from launcher.report import escape

    print(escape(traceback.format_exc(), lines=True), end="", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

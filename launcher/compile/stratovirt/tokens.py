"""The argv tokenizer StratoVirt v2.2 and ozone share (``util/src/arg_parser.rs``) and their option tables.

Single-dash options only; an element starting with '-' must be a known option, so no value can
start with '-'; values attach to the latest option; ``--`` ends option processing. The tables
below give each option's arity (flag, one value, zero-or-one, one-or-more) and whether it may
repeat. Emission checks its output against the same tables, so both directions agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from launcher.compile.stratovirt.props import fail, suggest


class Arity(Enum):
    FLAG = "flag"  # no value
    ONE = "one"  # exactly one value
    OPTIONAL = "optional"  # zero or one value (-D, libvirt compatibility options)
    MULTI = "multi"  # one or more values (each value element is one item)


@dataclass(frozen=True)
class OptSpec:
    arity: Arity
    repeatable: bool = False


_ONE, _FLAG, _OPT = OptSpec(Arity.ONE), OptSpec(Arity.FLAG), OptSpec(Arity.OPTIONAL)
_MANY = OptSpec(Arity.MULTI, repeatable=True)

# StratoVirt v2.2 (machine_manager/src/cmdline.rs). "-freeze" is the long spelling of "-S".
STRATOVIRT_OPTIONS: dict[str, OptSpec] = {
    "-name": _ONE,
    "-machine": _ONE,
    "-accel": _ONE,
    "-smp": _ONE,
    "-cpu": _ONE,
    "-m": _ONE,
    "-mem-path": _ONE,
    "-mem-prealloc": _FLAG,
    "-numa": _MANY,
    "-kernel": _ONE,
    "-append": _MANY,
    "-initrd": _ONE,
    "-qmp": _ONE,
    "-mon": _ONE,
    "-drive": _MANY,
    "-netdev": _MANY,
    "-chardev": _MANY,
    "-device": _MANY,
    "-serial": _ONE,
    "-object": _MANY,
    "-global": _MANY,
    "-D": _OPT,
    "-pidfile": _ONE,
    "-daemonize": _FLAG,
    "-disable-seccomp": _FLAG,
    "-incoming": _ONE,
    "-trace": _ONE,
    "-vnc": _ONE,
    "-S": _FLAG,
    "-freeze": _FLAG,
    "-mod-test": _ONE,
}
# Accepted and ignored for libvirt (hidden in StratoVirt's help).
LIBVIRT_IGNORED = [
    "-overcommit",
    "-uuid",
    "-no-user-config",
    "-nodefaults",
    "-sandbox",
    "-msg",
    "-rtc",
    "-no-shutdown",
    "-boot",
    "-nographic",
    "-realtime",
    "-display",
    "-usb",
]
STRATOVIRT_OPTIONS.update({name: _OPT for name in LIBVIRT_IGNORED})
ALIASES = {"-freeze": "-S"}
HELP_OPTIONS = ("-h", "-help", "-V", "-version")

# ozone v2.2 (ozone/src/args.rs). -source and -cgroup take several values in ONE occurrence.
OZONE_OPTIONS: dict[str, OptSpec] = {
    "-name": _ONE,
    "-exec-file": _ONE,
    "-uid": _ONE,
    "-gid": _ONE,
    "-source": OptSpec(Arity.MULTI),
    "-netns": _ONE,
    "-capability": _ONE,
    "-numa": _ONE,
    "-cgroup": OptSpec(Arity.MULTI),
    "-clean-resource": _FLAG,
}


@dataclass(frozen=True)
class Value:
    text: str
    index: int  # 1-based position in the user's argv


@dataclass(frozen=True)
class Occurrence:
    """One option as given: its canonical name, where it sits, and its value elements."""

    name: str
    index: int
    values: tuple[Value, ...]

    @property
    def value(self) -> Value:
        return self.values[0]


@dataclass(frozen=True)
class Tokens:
    program: str | None
    options: tuple[Occurrence, ...]
    extra: tuple[str, ...]  # after "--"
    extra_index: int  # 1-based index of the first extra element

    def all(self, name: str) -> list[Occurrence]:
        return [o for o in self.options if o.name == name]

    def first(self, name: str) -> Occurrence | None:
        return next((o for o in self.options if o.name == name), None)


def tokenize(
    argv: list[str], table: dict[str, OptSpec], program: str = "StratoVirt", start: int = 1
) -> Tokens:
    """Split argv into options as StratoVirt's ArgParser does; ``start`` numbers argv[0]."""
    prog = None
    items = list(argv)
    first = start
    if items and not items[0].startswith("-"):
        prog, items, first = items[0], items[1:], start + 1  # a leading program path
    found: list[tuple[str, int, list[Value]]] = []
    extra: list[str] = []
    extra_index = first + len(items)
    for pos, arg in enumerate(items):
        index = first + pos
        if arg == "--":
            extra, extra_index = items[pos + 1 :], index + 1
            break
        if arg in HELP_OPTIONS:
            raise fail(
                f"'{arg}' makes {program} print its help or version and exit: there is no VM here",
                index,
                hint=f"remove '{arg}'",
            )
        if arg.startswith("-"):
            if arg not in table:
                raise fail(
                    f"Found argument '{arg}' which wasn't expected, or isn't valid in the context",
                    index,
                    hint=suggest(arg, table) + f"{program} options are single-dash names; "
                    "an option value can never start with '-'",
                )
            found.append((ALIASES.get(arg, arg), index, []))
            continue
        if not found:
            raise fail(
                f"Found argument '{arg}' which wasn't expected, or isn't valid in the context",
                index,
                hint="a value must follow its option",
            )
        found[-1][2].append(Value(arg, index))
    seen: set[str] = set()
    out: list[Occurrence] = []
    for name, index, values in found:
        spec = table[name]
        if name in seen and not spec.repeatable:
            raise fail(
                f"The argument '{name}' was provided more than once",
                index,
                hint=f"{program} takes '{name}' once",
            )
        seen.add(name)
        if spec.arity is Arity.FLAG and values:
            raise fail(
                f"The value '{values[0].text}' is illegal for argument '{name}'",
                values[0].index,
                hint=f"'{name}' is a flag and takes no value",
            )
        if spec.arity in (Arity.ONE, Arity.MULTI) and not values:
            raise fail(f"The argument '{name}' requires a value", index)
        if spec.arity in (Arity.ONE, Arity.OPTIONAL) and len(values) > 1:
            raise fail(
                f"The argument '{name}' only need one value",
                values[1].index,
                hint="quote a value that contains spaces",
            )
        out.append(Occurrence(name, index, tuple(values)))
    return Tokens(prog, tuple(out), tuple(extra), extra_index)


def check_emitted(argv: list[str], table: dict[str, OptSpec]) -> None:
    """Emission's own guard: what we print must tokenize back (no value starting with '-')."""
    tokenize(argv, table)

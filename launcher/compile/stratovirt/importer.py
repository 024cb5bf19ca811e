"""StratoVirt v2.2 (x86_64) argv → manifest model: ``import_argv``.

Accepts exactly what StratoVirt accepts: the same tokenizer, the same options processed in
StratoVirt's own order (so the first error reported is StratoVirt's first error), strict keys and
value spellings, with errors in StratoVirt's words plus a hint, located at the argv element
(``Mark("argv", N, C)``: N-th argument as given, C-th character in it). What StratoVirt accepts
but ignores (libvirt compatibility options, ``-numa`` on microvm, ``vectors=``) becomes a warning.
Cross-option rules are ``launcher.validate.check_model``'s; its issues are located too.

The parsers are one module per kind of option (``import_machine.py``, ``import_backends.py``,
``import_devices.py``); this module applies them in StratoVirt's order, collects every error
and validates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from launcher.compile.stratovirt.import_assemble import assemble
from launcher.compile.stratovirt.import_backends import (
    parse_chardev,
    parse_drive,
    parse_netdev,
    parse_numa,
    parse_object,
    parse_serial,
)
from launcher.compile.stratovirt.import_devices import parse_device
from launcher.compile.stratovirt.import_machine import (
    parse_accel,
    parse_append,
    parse_cpu,
    parse_global,
    parse_incoming,
    parse_m,
    parse_machine,
    parse_mem_path,
    parse_mon,
    parse_name,
    parse_qmp,
    parse_simple,
    parse_smp,
    parse_trace,
    reject_unsupported,
)
from launcher.compile.stratovirt.import_state import (
    ImportPathFn,
    State,
    base_dir_paths,
    locate,
)
from launcher.compile.stratovirt.tokens import (
    STRATOVIRT_OPTIONS,
    Tokens,
    Value,
    tokenize,
)
from launcher.errors import InvalidInput, Issue
from launcher.model import MachineType, Manifest

DEFAULT_NAME = "stratovirt"


@dataclass
class ImportResult:
    manifest: Manifest
    warnings: list[Issue] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)  # manifest key path -> argv index


def _each(
    tokens: Tokens, name: str, parse: Callable[[Value, State], None], st: State, attempt: _Errors
) -> None:
    for o in tokens.all(name):
        for v in o.values:
            attempt(partial(parse, v, st))


class _Errors:
    """Every option's error in one run, as validation reports a manifest's.

    Options are independent enough to go on after one fails; if a later option then fails in a
    way that is only a knock-on of an earlier error, the errors so far are what is reported.
    """

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def __call__(self, action: Callable[[], object]) -> None:
        try:
            action()
        except InvalidInput as exc:
            self.issues.extend(i for i in exc.issues if i.is_error)
        except Exception:
            if not self.issues:
                raise
            raise InvalidInput(self.issues) from None

    def raise_any(self) -> None:
        if self.issues:  # in argv order, as the user reads them
            where = lambda i: (i.mark.line, i.mark.col) if i.mark else (0, 0)  # noqa: E731
            raise InvalidInput(sorted(self.issues, key=where))


def read_argv(tokens: Tokens, st: State) -> None:
    """Apply the options in StratoVirt's ``create_vmconfig`` order, then devices in argv order."""
    attempt = _Errors()
    for name, parse in (("-name", parse_name), ("-machine", parse_machine), ("-accel", parse_accel),
                        ("-m", parse_m), ("-mem-path", parse_mem_path), ("-smp", parse_smp),
                        ("-cpu", parse_cpu)):  # fmt: skip
        if (o := tokens.first(name)) is not None:
            attempt(partial(parse, o, st))
    attempt(partial(parse_simple, tokens, st))
    if (o := tokens.first("-serial")) is not None:
        attempt(partial(parse_serial, o.value, st))
    if (o := tokens.first("-incoming")) is not None:
        attempt(partial(parse_incoming, o, st))
    attempt(partial(reject_unsupported, tokens, st))
    if appends := tokens.all("-append"):
        attempt(partial(parse_append, appends, st))
    _each(tokens, "-drive", parse_drive, st, attempt)
    _each(tokens, "-object", parse_object, st, attempt)
    _each(tokens, "-netdev", parse_netdev, st, attempt)
    _each(tokens, "-chardev", parse_chardev, st, attempt)
    for o in tokens.all("-global"):
        attempt(partial(parse_global, o, st))
    if (o := tokens.first("-trace")) is not None:
        attempt(partial(parse_trace, o, st))
    for name, parse in (("-qmp", parse_qmp), ("-mon", parse_mon)):
        if (o := tokens.first(name)) is not None:
            attempt(partial(parse, o, st))
    attempt(partial(_numa, tokens, st))
    why = "-device values are never parsed on machine type none"
    for o in tokens.all("-device"):
        for v in o.values:
            none = st.machine.type is MachineType.NONE
            attempt(partial(_lenient, none, partial(parse_device, v, st), v.index, st, why))
    attempt.raise_any()


def _numa(tokens: Tokens, st: State) -> None:
    """Nodes before distances, as StratoVirt assembles them; on microvm -numa is never parsed."""
    values = [v for o in tokens.all("-numa") for v in o.values]
    nodes_first = sorted(values, key=lambda v: not v.text.startswith("node"))
    for v in nodes_first:
        _lenient(not st.standard, partial(parse_numa, v, st), v.index, st,
                 "StratoVirt ignores -numa on this machine type")  # fmt: skip
    if not st.standard and st.numa_nodes:
        st.warn("StratoVirt ignores -numa on microvm: kept in the manifest for the builtin engine",
                st.where.get(f"numa.nodes.{st.numa_nodes[0]['id']}", 0))  # fmt: skip


def _lenient(lenient: bool, action: Callable[[], object], index: int, st: State, why: str) -> None:
    if not lenient:
        action()
        return
    try:
        action()
    except InvalidInput as exc:
        st.warn(
            f"{why}; this one is invalid and was dropped: {exc.issues[0].message.splitlines()[0]}",
            index,
        )


def import_argv(
    argv: list[str],
    *,
    base_dir: str = ".",
    paths: ImportPathFn | None = None,
    default_name: str = DEFAULT_NAME,
    start: int = 1,
    validate: bool = True,
) -> ImportResult:
    """The manifest model for a StratoVirt argv; raises ``InvalidInput`` with located issues."""
    tokens = tokenize(list(argv), STRATOVIRT_OPTIONS, "StratoVirt", start)
    st = State(paths or base_dir_paths(base_dir))
    read_argv(tokens, st)
    st.fields.setdefault("name", default_name)
    result = ImportResult(assemble(st), list(st.warnings), dict(st.where))
    if validate:
        validate_result(result)
    return result


def validate_result(result: ImportResult) -> None:
    """Run ``check_model``; its issues are placed at the argv element they came from."""
    issues = locate(_check(result.manifest), result.where)
    errors = [i for i in issues if i.is_error]
    result.warnings += [i for i in issues if not i.is_error]
    if errors:
        raise InvalidInput(errors + result.warnings)


def _check(manifest: Manifest) -> list[Issue]:
    try:
        from launcher.validate import check_model
    except ImportError:  # validation not installed in this checkout yet
        return []
    return list(check_model(manifest, target="stratovirt"))

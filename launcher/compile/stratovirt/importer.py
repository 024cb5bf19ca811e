"""StratoVirt v2.2 (x86_64) argv → manifest model: ``import_argv``.

Accepts exactly what StratoVirt accepts: the same tokenizer, the same options processed in
StratoVirt's own order (so the first error reported is StratoVirt's first error), strict keys and
value spellings, with errors in StratoVirt's words plus a hint, located at the argv element
(``Mark("argv", N, C)``: N-th argument as given, C-th character in it). What StratoVirt accepts
but ignores (libvirt compatibility options, ``-numa`` on microvm, ``vectors=``) becomes a warning.
Cross-option rules are ``launcher.validate.check_model``'s; its issues are located too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from launcher.compile.stratovirt.common import PathKind
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
from launcher.compile.stratovirt.import_state import (
    ImportPathFn,
    State,
    base_dir_paths,
    locate,
)
from launcher.compile.stratovirt.props import (
    fail,
    parse_props,
    read_size,
    read_uint,
)
from launcher.compile.stratovirt.tokens import (
    LIBVIRT_IGNORED,
    STRATOVIRT_OPTIONS,
    Occurrence,
    Tokens,
    Value,
    tokenize,
)
from launcher.errors import InvalidInput, Issue
from launcher.model import Log, Machine, MachineType, Manifest, Monitor

DEFAULT_NAME = "stratovirt"


@dataclass
class ImportResult:
    manifest: Manifest
    warnings: list[Issue] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)  # manifest key path -> argv index


def parse_name(o: Occurrence, st: State) -> None:
    if len(o.value.text.encode()) > 255:
        raise fail("Input name string's length must be no more than 255", o.value.index)
    st.fields["name"] = o.value.text
    st.at("name", o.value.index)


def parse_machine(o: Occurrence, st: State) -> None:
    keys = {"type", "dump-guest-core", "mem-share", "accel", "usb"}
    p = parse_props(o.value.text, o.value.index, "-machine", keys)
    name = (p.raw("type") or p.positional or "").lower()
    if name not in ("none", "microvm", "q35"):
        hint = "virt is the aarch64 machine" if name == "virt" else "use microvm, q35 or none"
        raise p.error(f"Invalid machine type '{name}'", "type" if p.has("type") else "", hint)
    accel = p.raw("accel")
    if accel is not None and accel not in ("kvm", "kvm:tcg", "tcg"):
        raise p.error(f"Invalid accel '{accel}'", "accel", "use accel=kvm")
    usb = p.bool("usb")
    if usb:
        raise p.error("usb=on is not supported", "usb", "write usb=off or drop it")
    dump = p.bool("dump-guest-core")
    share = p.bool("mem-share")
    st.machine = Machine(MachineType(name), dump is not False, bool(share), accel, usb)
    st.at("machine", o.value.index)


def parse_accel(o: Occurrence, st: State) -> None:
    p = parse_props(o.value.text, o.value.index, "-accel", set())
    if p.positional != "kvm":
        raise p.error(f"Invalid accel '{p.positional}'", "", "use -accel kvm")
    st.warn("-accel kvm has no effect (StratoVirt always uses KVM): dropped", o.index)


SMP_KEYS = ("maxcpus", "sockets", "dies", "clusters", "cores", "threads")


def parse_smp(o: Occurrence, st: State) -> None:
    p = parse_props(o.value.text, o.value.index, "-smp", {"cpus", *SMP_KEYS})
    if p.positional is not None:
        try:
            cpus = read_uint(p.positional)
        except ValueError as exc:
            raise p.error(f"invalid cpu count: {exc}") from None
        if p.has("cpus"):
            st.warn("-smp has both a count and cpus=: StratoVirt uses the count", o.index)
    elif p.has("cpus"):
        cpus = p.uint("cpus", 64, 1) or 0
    else:
        raise p.error("'cpus' is missing for 'smp' device", "", "write -smp 4")
    if not 1 <= cpus <= 254:
        raise p.error(
            f"cpus must be within [1, 254], got {cpus}", "", "StratoVirt supports up to 254 vCPUs"
        )
    values = {k: p.uint(k, 64, 0 if k == "maxcpus" else 1) for k in SMP_KEYS}
    if values["maxcpus"] == 0:
        values["maxcpus"] = None  # StratoVirt: 0 means unset
    st.cpus = cpus
    st.fields["cpu"] = dict(cpus=cpus, **values)
    st.at("cpu", o.value.index)


def parse_cpu(o: Occurrence, st: State) -> None:
    p = parse_props(o.value.text, o.value.index, "-cpu", {"pmu"})
    pmu = p.raw("pmu")
    if pmu is not None and pmu not in ("on", "off"):
        raise p.error(f"Invalid PMU option '{pmu}'", "pmu", "pmu takes exactly on or off")
    st.fields.setdefault("cpu", {}).update(
        model=p.positional, pmu=None if pmu is None else pmu == "on"
    )
    st.at("cpu.model", o.value.index)


def parse_m(o: Occurrence, st: State) -> None:
    p = parse_props(o.value.text, o.value.index, "-m", {"size"})
    text = p.positional if p.positional is not None else p.require("size")
    try:
        size = read_size(text)
    except ValueError as exc:
        raise p.error(f"invalid memory size: {exc}", "" if p.positional else "size") from None
    st.fields["memory"] = dict(size=size)
    st.at("memory.size", o.value.index)


def parse_mem_path(o: Occurrence, st: State) -> None:
    text = o.value.text.replace('"', "")
    st.fields.setdefault("memory", {})["path"] = st.path(text, PathKind.INPUT, o.value.index)
    st.at("memory.path", o.value.index)


def parse_append(occs: list[Occurrence], st: State) -> None:
    text = " ".join(v.text for o in occs for v in o.values)
    for word in text.split(" "):
        if word.count("=") >= 2:
            st.warn(f"StratoVirt keeps only '{'='.join(word.split('=')[:2])}' of kernel parameter '{word}'",
                    occs[0].index, "StratoVirt drops everything after a second '='")  # fmt: skip
    st.fields.setdefault("boot", {})["cmdline"] = text
    st.at("boot.cmdline", occs[0].index)


def parse_qmp(o: Occurrence, st: State) -> None:
    p = parse_props(o.value.text, o.value.index, "-qmp", {"server", "nowait"})
    parts = (p.positional or "").split(":")
    if len(parts) != 2 or parts[0] != "unix":
        raise p.error("Invalid socket path for qmp", "", "write -qmp unix:/run/vm.qmp,server,nowait (the path cannot contain ':')")  # fmt: skip
    for flag in ("server", "nowait"):
        if not p.has(flag):
            raise p.error(
                f"Argument '{flag}' is needed for qmp", "", "write -qmp unix:PATH,server,nowait"
            )
    st.fields["qmp"] = (st.path(parts[1], PathKind.OUTPUT, o.value.index),)
    st.at("qmp", o.value.index)


def parse_mon(o: Occurrence, st: State) -> None:
    p = parse_props(
        o.value.text, o.value.index, "-mon", {"id", "mode", "chardev"}, positional=False
    )
    chardev = p.require("chardev")
    if p.require("mode", "add mode=control") != "control":
        raise p.error("Invalid mode for -mon", "mode", "mode must be control")
    pooled = st.chardevs.get(chardev)
    if pooled is None or pooled.used_by is not None:
        raise p.error(f"Chardev {chardev} not found or is in use", "chardev", "declare -chardev socket,id=...,path=...,server,nowait")  # fmt: skip
    c = pooled.fields["chardev"]
    if not (c.backend == "socket" and c.server and c.nowait):
        raise p.error("the -mon chardev must be a socket with server and nowait", "chardev")
    pooled.used_by = o.value.index
    st.fields["monitors"] = (Monitor(chardev, p.raw("id")),)
    st.at("monitors", o.value.index)


def parse_global(o: Occurrence, st: State) -> None:
    for v in o.values:
        key = "pcie-root-port.fast-unplug"
        p = parse_props(v.text, v.index, "-global", {key}, positional=False)
        if "fast_unplug" in st.fields:
            raise p.error(f"Global config {key} has been added", key)
        value = p.require(key)
        if value not in ("0", "1"):
            raise p.error(f"{key} must be 0 or 1, got '{value}'", key)
        st.fields["fast_unplug"] = value == "1"
        st.at("fast-unplug", v.index)


def _decimal(text: str, width: int) -> bool:
    """ASCII digits, at most ``width`` of them (``isdigit`` alone lets '²' through to int())."""
    return 0 < len(text) <= width and text.isascii() and text.isdigit()


def parse_incoming(o: Occurrence, st: State) -> None:
    text, index = o.value.text, o.value.index
    parts = text.split(":")
    scheme = parts[0].lower()
    ok = len(parts) == 2 and scheme in ("file", "unix") and parts[1] != ""
    if scheme == "tcp" and len(parts) == 3:
        octets = parts[1].split(".")
        ok = len(octets) == 4 and all(_decimal(x, 3) and int(x) < 256 for x in octets)
        ok = ok and _decimal(parts[2], 5) and int(parts[2]) < 65536
    if not ok:
        raise fail(
            "Invalid incoming uri", index, 1, "write file:PATH, unix:PATH or tcp:IPV4:PORT", text
        )
    if scheme in ("file", "unix"):
        kind = PathKind.INPUT if scheme == "file" else PathKind.OUTPUT
        text = f"{parts[0]}:{st.path(parts[1], kind, index)}"
    st.fields["incoming"] = text
    st.at("incoming", index)


def parse_trace(o: Occurrence, st: State) -> None:
    items = dict(i.partition("=")[::2] for i in o.value.text.split(","))
    if not items.get("events"):
        raise fail(
            "trace: events file must be set.", o.value.index, hint="write -trace events=FILE"
        )
    if len(items) > 1:
        st.warn("-trace keys other than events= are ignored by StratoVirt: dropped", o.index)
    st.fields["trace"] = st.path(items["events"], PathKind.INPUT, o.value.index)
    st.at("trace", o.value.index)


def _simple(tokens: Tokens, st: State) -> None:
    """Path-valued and flag options without property lists."""
    for name, section, key, kind in (
        ("-kernel", "boot", "kernel", PathKind.INPUT),
        ("-initrd", "boot", "initrd", PathKind.INPUT),
    ):
        if (o := tokens.first(name)) is not None:
            st.fields.setdefault(section, {})[key] = st.path(o.value.text, kind, o.value.index)
            st.at(f"{section}.{key}", o.value.index)
    if tokens.first("-mem-prealloc"):
        st.fields.setdefault("memory", {})["prealloc"] = True
    if (o := tokens.first("-D")) is not None:
        file = st.path(o.value.text, PathKind.OUTPUT, o.value.index) if o.values else None
        st.fields["log"] = Log(file)
        st.at("log", o.index)
    if (o := tokens.first("-pidfile")) is not None:
        st.fields["pidfile"] = st.path(o.value.text, PathKind.OUTPUT, o.value.index)
        st.at("pidfile", o.value.index)
    for name, key, value in (("-daemonize", "daemonize", True), ("-disable-seccomp", "seccomp", False), ("-S", "paused", True)):  # fmt: skip
        if (o := tokens.first(name)) is not None:
            st.fields[key] = value
            st.at(key, o.index)


def _reject_unsupported(tokens: Tokens, st: State) -> None:
    for o in tokens.options:
        if o.name in ("-vnc", "-mod-test"):
            raise fail(
                f"{o.name} is not supported by svlaunch manifests", o.index, hint=f"remove {o.name}"
            )
        if o.name in LIBVIRT_IGNORED:
            st.warn(
                f"{o.name} is accepted and ignored by StratoVirt (libvirt compatibility): dropped",
                o.index,
            )
    if tokens.extra:
        st.warn("arguments after '--' are ignored by StratoVirt: dropped", tokens.extra_index)


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
    attempt(partial(_simple, tokens, st))
    if (o := tokens.first("-serial")) is not None:
        attempt(partial(parse_serial, o.value, st))
    if (o := tokens.first("-incoming")) is not None:
        attempt(partial(parse_incoming, o, st))
    attempt(partial(_reject_unsupported, tokens, st))
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

"""StratoVirt argv import: the machine-wide options (``-name``, ``-machine``, ``-accel``,
``-smp``, ``-cpu``, ``-m``, ``-mem-path``, ``-append``, ``-qmp``, ``-mon``, ``-global``,
``-incoming``, ``-trace``, the path and flag options), each parsed into ``State``.

Split from ``importer.py`` as ``import_backends.py`` and ``import_devices.py`` were: one module
per kind of option; ``importer.py`` keeps the order StratoVirt applies them in (``read_argv``),
error collection and validation.
"""

from __future__ import annotations

from launcher.compile.stratovirt.common import PathKind
from launcher.compile.stratovirt.import_state import State
from launcher.compile.stratovirt.props import fail, parse_props, read_size, read_uint
from launcher.compile.stratovirt.tokens import LIBVIRT_IGNORED, Occurrence, Tokens
from launcher.model import Log, Machine, MachineType, Monitor


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


def parse_simple(tokens: Tokens, st: State) -> None:
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


def reject_unsupported(tokens: Tokens, st: State) -> None:
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

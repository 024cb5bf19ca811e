"""The ozone sandbox invocation around StratoVirt, both ways: ``emit_ozone`` and ``import_ozone``.

ozone pivots into ``<root>/<exec-file basename>/<name>`` and bind-mounts each ``-source`` file
there under its basename, so inside the jail StratoVirt sees inputs (kernel, initrd, disks,
firmware, trace events) as ``./<basename>`` and creates its outputs (sockets, logs, pidfile) in
the jail folder. Emission therefore turns every input into a ``-source`` plus a ``./name``
argument, and requires outputs to lie in the jail folder (anywhere else StratoVirt cannot reach);
import maps ``./name`` back to the ``-source`` with that basename. Extra ``-source`` files the VM
does not name are kept in ``ozone.sources``.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace

from launcher.compile.stratovirt.common import PathKind, cannot
from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.importer import ImportResult, import_argv, validate_result
from launcher.compile.stratovirt.props import fail, read_uint, suggest
from launcher.compile.stratovirt.tokens import OZONE_OPTIONS, Tokens, tokenize
from launcher.model import Manifest, Ozone

CGROUP_KEYS = ("cpuset.cpus", "memory.limit_in_bytes")
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
KNOWN_CAPS = {f"CAP_{c}" for c in CAPABILITIES}


def jail_dir(m: Manifest) -> str:
    """Where ozone builds the jail: ``<root>/<exec-file basename>/<name>``."""
    o = m.ozone
    assert o is not None
    return posixpath.join(o.root, posixpath.basename(o.exec_file), o.name or m.name)


class JailPaths:
    """Emission's path mapping inside the jail; collects the ``-source`` list as it goes."""

    def __init__(self, m: Manifest) -> None:
        self.jail = jail_dir(m)
        self.sources: list[str] = []
        self.by_base: dict[str, str] = {}

    def add_source(self, path: str, key: str) -> str:
        base = posixpath.basename(path.rstrip("/"))
        other = self.by_base.get(base)
        if other is not None and other != path:
            raise cannot(
                f"{key}: '{path}' and '{other}' would both be ./{base} in the ozone jail",
                key,
                "ozone mounts every -source under its basename: rename one of the files",
            )
        if other is None:
            self.by_base[base] = path
            self.sources.append(path)
        return base

    def __call__(self, path: str, kind: PathKind, key: str) -> str:
        if kind is PathKind.KEEP:
            return path
        if kind is PathKind.INPUT:
            return "./" + self.add_source(path, key)
        rel = posixpath.relpath(path, self.jail)
        if rel == "." or rel.startswith(".."):
            raise cannot(
                f"{key}: '{path}' is outside the ozone jail {self.jail}, where StratoVirt creates its files",
                key,
                f"put it in the jail: {posixpath.join(self.jail, posixpath.basename(path))}",
            )
        return "./" + rel


def emit_ozone(m: Manifest) -> list[str]:
    """ozone's arguments, ``--``, then StratoVirt's arguments with jail-relative paths."""
    o = m.ozone
    if o is None:
        raise cannot(
            "the manifest has no [ozone] section", "ozone", "add [ozone] exec-file, uid, gid"
        )
    jail = JailPaths(m)
    inner = emit_argv(m, jail)
    for i, extra in enumerate(o.sources):
        jail.add_source(extra, f"ozone.sources[{i}]")
    argv = [
        "-name",
        o.name or m.name,
        "-exec-file",
        o.exec_file,
        "-uid",
        str(o.uid),
        "-gid",
        str(o.gid),
    ]
    if jail.sources:
        argv += ["-source", *jail.sources]
    if o.netns is not None:
        argv += ["-netns", o.netns]
    if o.capabilities:
        argv += ["-capability", ",".join(o.capabilities)]
    if o.numa is not None:
        argv += ["-numa", o.numa]
    if o.cgroup:
        argv += ["-cgroup", *(f"{k}={v}" for k, v in o.cgroup)]
    if o.clean_resource:
        argv.append("-clean-resource")
    return [*argv, "--", *inner]


# -- import -------------------------------------------------------------------------------------


def _required(tokens: Tokens, name: str, index: int) -> tuple[str, int]:
    o = tokens.first(name)
    if o is None:
        raise fail(
            f"The following required arguments were not provided: {name}",
            index,
            hint="ozone always needs -name, -exec-file, -uid and -gid",
        )
    return o.value.text, o.value.index


def _id(tokens: Tokens, name: str, start: int) -> int:
    text, index = _required(tokens, name, start)
    try:
        value = read_uint(text, 32)
    except ValueError as exc:
        raise fail(f"Invalid {name[1:]}: {exc}", index) from None
    if value > 65535:
        raise fail(f"{name[1:]} must be <= 65535, got {value}", index)
    return value


def _capabilities(tokens: Tokens) -> tuple[str, ...] | None:
    o = tokens.first("-capability")
    if o is None:
        return None
    caps = tuple(c.upper() for c in o.value.text.split(","))
    for c in caps:
        if c not in KNOWN_CAPS:
            raise fail("Invalid capability argument: " + c, o.value.index, hint=suggest(c, KNOWN_CAPS) + "write full names with the CAP_ prefix, comma-separated")  # fmt: skip
    return caps


def _cgroup(tokens: Tokens) -> tuple[tuple[str, str], ...]:
    o = tokens.first("-cgroup")
    if o is None:
        return ()
    out: dict[str, str] = {}
    for v in o.values:
        if v.text.count("=") != 1:
            raise fail(f"Invalid cgroup argument '{v.text}'", v.index, hint="one controller.file=value per element, space-separated: -cgroup cpuset.cpus=4-5 memory.limit_in_bytes=1000000")  # fmt: skip
        key, value = v.text.split("=")
        if key not in CGROUP_KEYS:
            raise fail(f"Unsupported cgroup controller '{key}'", v.index, hint=f"use {' or '.join(CGROUP_KEYS)}")  # fmt: skip
        if key in out:
            raise fail(f"cgroup '{key}' is given twice", v.index)
        out[key] = value
    return tuple(out.items())


def import_ozone(
    argv: list[str], *, base_dir: str = ".", start: int = 1, validate: bool = True
) -> ImportResult:
    """An ozone invocation (``OZONE_ARGS -- STRATOVIRT_ARGS``) → manifest with an ``[ozone]`` section."""
    tokens = tokenize(list(argv), OZONE_OPTIONS, "ozone", start)
    end = tokens.extra_index
    root = os.path.abspath(base_dir)

    def host(text: str) -> str:
        return os.path.normpath(os.path.join(root, text))

    name, name_index = _required(tokens, "-name", end)
    if len(name.encode()) > 255:
        raise fail("Input name string's length must be no more than 255", name_index)
    exec_file = host(_required(tokens, "-exec-file", end)[0])
    uid, gid = _id(tokens, "-uid", end), _id(tokens, "-gid", end)
    src = tokens.first("-source")
    sources = [host(v.text) for v in src.values] if src else []
    by_base: dict[str, str] = {}
    for path in sources:
        by_base.setdefault(posixpath.basename(path.rstrip("/")), path)
    used: set[str] = set()
    ozone = Ozone(exec_file, uid, gid, capabilities=_capabilities(tokens), cgroup=_cgroup(tokens))
    jail = posixpath.join(ozone.root, posixpath.basename(exec_file), name)

    def resolve(text: str, kind: PathKind, index: int) -> str:
        inside = posixpath.normpath(posixpath.join("/", text))
        if kind is PathKind.OUTPUT:
            return jail + inside if inside != "/" else jail
        if kind is PathKind.KEEP or inside.startswith("/dev/"):
            return inside
        base = inside[1:]
        if base in by_base:
            used.add(by_base[base])
            return by_base[base]
        raise fail(
            f"'{text}' is not in the ozone jail: ozone mounts only -source files, at ./<basename>",
            index,
            hint=f"add the host file to -source (its basename must be '{posixpath.basename(inside)}')",
        )

    result = import_argv(
        list(tokens.extra), paths=resolve, default_name=name, start=end, validate=False
    )
    m = result.manifest
    netns, numa = tokens.first("-netns"), tokens.first("-numa")
    ozone = Ozone(
        exec_file,
        uid,
        gid,
        name=None if name == m.name else name,
        capabilities=ozone.capabilities,
        netns=host(netns.value.text) if netns else None,
        sources=tuple(s for s in sources if s not in used),
        numa=numa.value.text if numa else None,
        cgroup=ozone.cgroup,
        clean_resource=tokens.first("-clean-resource") is not None,
    )
    result.manifest = replace(m, ozone=ozone)
    result.where.setdefault("ozone", start)
    if validate:
        validate_result(result)
    return result

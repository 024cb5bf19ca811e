"""How a manifest key is declared: once, on the model field that holds it.

Cloud Hypervisor keeps an option's parser beside its struct; svlaunch keeps every fact about a
manifest key on its model field, written with ``key(...)`` (a ``dataclasses.field`` whose
metadata is a ``Key``): the type is the field's annotation, and the declaration adds the default,
the limits, the documentation, the StratoVirt option and property it compiles to, the engine plan
field it feeds and how a change reaches a running VM. Everything else reads these declarations:

- the JSON Schema and ``docs/manifest.md`` (``launcher.manifest.schemagen``),
- loading and dumping (``launcher.manifest.build``, ``launcher.manifest.dump``),
- the argv emitter and importer (``launcher.compile.stratovirt.declared``),
- the plan builder (``launcher.compile.engine_devices``), the limits rule
  (``launcher.validate.limits``) and per-key diffs (``launcher.model_diff``).

This module only names things (no parsing, no schema): the model imports it on every run.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.device_rules import IntRange

#: the default of a key that must be given (the dataclass field has no default either)
REQUIRED: Any = dataclasses.MISSING

# Value kinds that the annotation alone does not tell (``kind=``); plain ``bool``, ``int``,
# ``str``, enums, nested sections and ``tuple[str, ...]`` come from the annotation.
PATH = "path"  # a host path, resolved against the manifest's folder
PATHS = "paths"  # a list of host paths
SIZE = "size"  # bytes, written as an integer or "512M"
INTLIST = "intlist"  # a cpu or host-node list: [0, 1, 4] or "0-1,4"
FDS = "fds"  # inherited file descriptors: a list of integers
TEXT = "text"  # a string, or a list of words joined with spaces (boot.cmdline)
SOCKETS = "sockets"  # one socket path or a list of them (qmp)
URI = "uri"  # file:PATH | unix:PATH | tcp:IP:PORT, the path resolved like a path
PCI = "pci"  # ``PciAddress``: the bus/addr/multifunction keys of the device's own table
LOG = "log"  # true, or a table with a file
SERIAL = "serial"  # "stdio" | "pty", or a chardev table
STRMAP = "strmap"  # a table of string values, kept as ((key, value), ...) pairs
TABLE = "table"  # tuple of items keyed by id: [drives.<id>]
LIST = "list"  # tuple of items written as a list of tables: [[pflash]]
VM_NAME = "vm-name"  # the VM name (engine.names)


@dataclasses.dataclass(frozen=True, slots=True)
class Apply:
    """How a change of a key reaches a running VM: when it next starts, live over QMP, or not
    at all because the key is svlaunch's own (where the VM runs, its restart policy)."""

    qmp: tuple[str, ...] = ()  # the QMP commands that apply the change, in order; () = restart
    note: str = ""  # when the live path applies, or what a restart means
    host: bool = False  # svlaunch's own setting: the running VM is not touched

    @property
    def live(self) -> bool:
        return bool(self.qmp)

    @property
    def restarts(self) -> bool:
        """The change takes effect only when the VM starts again."""
        return not self.qmp and not self.host

    def __str__(self) -> str:
        if self.qmp:
            return f"live: {', '.join(self.qmp)}"
        return "none" if self.host else "restart"


RESTART = Apply(note="takes effect when the VM next starts")
#: svlaunch's own keys (which hosts run the VM, its restart and update policy, its
#: dependencies): a change is recorded, nothing in the running VM changes
HOST_ONLY = Apply(note="svlaunch's own setting: the running VM is not touched", host=True)
#: the balloon target is set with QMP ``balloon`` (the guest's driver gives the memory back)
BALLOON_TARGET = Apply(("balloon",), "QMP balloon: the guest's balloon driver follows the target")
#: a disk in one of microvm's virtio-mmio block slots is unplugged (device_del, blockdev-del)
#: and plugged (blockdev-add, device_add) without a restart: a changed drive is replaced, an
#: added or removed one is plugged or unplugged
HOT_REPLACE_DISK = Apply(
    ("device_del", "blockdev-del", "blockdev-add", "device_add"),
    "hot-replace in a virtio-mmio block slot (microvm, at most 4 disks)",
)
#: likewise a NIC in one of microvm's two virtio-mmio net slots
HOT_REPLACE_NIC = Apply(
    ("device_del", "netdev_del", "netdev_add", "device_add"),
    "hot-replace in a virtio-mmio net slot (microvm, tap NICs without vhost, at most 2)",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """One manifest key's declaration (see the module docstring and ``key()``)."""

    default: Any
    doc: str
    sv: str | tuple[str, ...] | None = None
    plan: str | None = None
    apply: Apply = RESTART
    kind: str = ""
    limits: IntRange | None = None
    rule: str = ""
    values: tuple[str, ...] = ()
    nonempty: bool = False
    io: str = ""
    what: str = ""
    name: str = ""
    at: tuple[str, ...] = ()
    item: str = ""
    snapshot: str = ""

    def sv_option(self) -> str | None:
        """The StratoVirt option or device whose property list holds this key, if any."""
        return self.sv[0] if isinstance(self.sv, tuple) else None


def key(
    default: Any,
    doc: str,
    *,
    sv: str | tuple[str, ...] | None = None,
    plan: str | None = None,
    apply: Apply = RESTART,
    kind: str = "",
    limits: IntRange | None = None,
    rule: str = "",
    values: tuple[str, ...] = (),
    nonempty: bool = False,
    io: str = "",
    what: str = "",
    name: str = "",
    at: tuple[str, ...] = (),
    item: str = "",
    snapshot: str = "",
) -> Any:
    """A model field declaring one manifest key.

    ``default``: the value when the key is absent (``REQUIRED``: it must be given).
    ``doc``: one or two sentences for the schema and the docs.
    ``sv``: where StratoVirt reads it: ``(option, property[, type])`` for a property of an
    option's ``key=value`` list (type: ``u8``/``u16``/``u32``/``i32``/``flag``; default ``u64``
    for integers, ``on``/``off`` for booleans), or a plain text for anything else (``"-S"``).
    ``plan``: the engine plan field it feeds, ``"BlkPlan.queue_size"``.
    ``apply``: how a change reaches a running VM (``RESTART``, or a live ``Apply``).
    ``kind``: a value kind the annotation does not tell (``PATH``, ``SIZE``...).
    ``limits`` and ``rule``: the allowed range and the validation rule that reports it.
    ``values``: the words a plain ``str`` key accepts (for ``PCI``: the placement keys the
    device has, when not all of bus, addr and multifunction). ``nonempty``: ``""`` is refused.
    ``io``: for paths, ``input`` (read), ``output`` (created) or ``keep`` (a device node).
    ``what``: the value's name in messages. ``name``: the manifest key, when it is not the
    field name with ``-`` for ``_``; ``at``: the tables it sits in (``("global", ...)``).
    ``item``: for tables and lists, one entry's doc. ``snapshot``: why a VM that sets this key
    cannot be snapshotted or restored (StratoVirt's limits, docs/snapshot.md); a manifest with
    ``incoming`` and this key set is refused at the key (rule ``snapshot-unsupported``).
    """
    declared = Key(
        default=default, doc=doc, sv=sv, plan=plan, apply=apply, kind=kind, limits=limits,
        rule=rule, values=values, nonempty=nonempty or kind in (PATH, PATHS), io=io, what=what,
        name=name, at=at, item=item, snapshot=snapshot,
    )  # fmt: skip
    meta = {"key": declared}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, type):  # a section: each manifest gets its own default value
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(field: dataclasses.Field[Any]) -> Key | None:
    """The declaration of a model field (None: not a manifest key, e.g. ``Manifest.source``)."""
    return field.metadata.get("key")


# -- walking the declarations (the generators' side) -------------------------------------------

BOOL, INT, STR, ENUM, STRINGS, SECTION = "bool", "int", "str", "enum", "strings", "section"


class Spec:
    """A declared field as the generators see it: its manifest key, value kind and type."""

    __slots__ = ("_type", "attr", "decl", "kind", "name", "optional", "type_name")

    def __init__(self, attr: str, decl: Key, kind: str, type_name: str, optional: bool) -> None:
        self.attr = attr  # the model field
        self.decl = decl
        self.name = decl.name or attr.replace("_", "-")  # the manifest key
        self.kind = kind  # one of the kinds above
        self.type_name = type_name  # the annotation's class: "bool", "Aio", "Drive"...
        self.optional = optional  # ``X | None``
        self._type: Any = None

    @property
    def type(self) -> Any:
        """The class the annotation names (a model class is loaded on first use)."""
        if self._type is None:
            self._type = _resolve(self.type_name)
        return self._type

    @property
    def required(self) -> bool:
        return self.decl.default is REQUIRED

    def default_value(self) -> Any:
        """The model value of an absent key (a fresh section for section keys)."""
        d = self.decl.default
        return d() if isinstance(d, type) else d


_SPECS: dict[type, tuple[Spec, ...]] = {}


def specs(cls: type) -> tuple[Spec, ...]:
    """The declared fields of a model class, in manifest key order (computed once per class)."""
    found = _SPECS.get(cls)
    if found is None:
        found = _SPECS[cls] = tuple(
            _spec(f) for f in dataclasses.fields(cls) if declared(f) is not None
        )
    return found


_SCALARS = {"bool": BOOL, "int": INT, "str": STR}


def _spec(f: dataclasses.Field[Any]) -> Spec:
    decl = declared(f)
    assert decl is not None
    text = str(f.type)
    optional = text.endswith(" | None")
    if optional:
        text = text[: -len(" | None")]
    many = text.startswith("tuple[") and text.endswith(", ...]")
    name = text[len("tuple[") : -len(", ...]")] if many else text
    kind = decl.kind
    if not kind:
        from launcher import model_enums

        if name in _SCALARS:
            kind = STRINGS if many else _SCALARS[name]
        else:
            kind = ENUM if hasattr(model_enums, name) else SECTION
    return Spec(f.name, decl, kind, name, optional)


def _resolve(name: str) -> Any:
    """The class an annotation names: a builtin, a model enum or a model class."""
    builtin = {"bool": bool, "int": int, "str": str}.get(name)
    if builtin is not None:
        return builtin
    from launcher import model, model_enums

    return getattr(model_enums, name, None) or getattr(model, name)

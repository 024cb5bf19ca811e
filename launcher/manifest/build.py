"""Schema-valid plain data → ``launcher.model.Manifest``, walking the model's key declarations.

Runs after the JSON Schema check, so types and key names are already right; what is left is
value syntax (sizes, cpu lists, PCI addresses), defaults, and path resolution against the
manifest's folder. Each key is read by its declared kind (``launcher.keys``); every problem
becomes an ``Issue`` with its key path, and the caller decides where it points in the file.
"""

from __future__ import annotations

import os
from typing import Any

from launcher import keys as k
from launcher import model as m
from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, format_path
from launcher.manifest.values import SIZE_HINT, parse_int_list, parse_pci_addr, parse_size

SERIAL_ID = "serial_chardev"  # StratoVirt's id of the inline -serial backend
INTLIST_HINT = 'write a list like [0, 1, 4] or a string like "0-1,4"'
ADDR_HINT = 'write "SLOT" or "SLOT.FUNCTION", e.g. "0x3" or "0x3.0x1"'


_AS_IS = frozenset((k.BOOL, k.INT, k.STR, k.VM_NAME))


class _Layout:
    """How a class's keys sit in its table: by name, in nested tables, and its PCI keys."""

    __slots__ = ("keys", "nested", "pci")

    def __init__(self, cls: type) -> None:
        specs = k.specs(cls)
        self.keys = {s.name: s for s in specs if not s.decl.at and s.kind != k.PCI}
        self.nested = tuple(s for s in specs if s.decl.at)
        self.pci = next((s for s in specs if s.kind == k.PCI), None)


_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    found = _LAYOUTS.get(cls)
    if found is None:
        found = _LAYOUTS[cls] = _Layout(cls)
    return found


def resolve_path(value: str, base_dir: str) -> str:
    """Absolute, normalised path; relative ones resolve against ``base_dir``."""
    return os.path.normpath(os.path.join(base_dir, value))


class Builder:
    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.issues: list[Issue] = []

    def fail(self, path: Path, message: str, code: str, hint: str = "") -> None:
        self.issues.append(Issue(message, format_path(path), hint, code=code))

    def path(self, value: str) -> str:
        return resolve_path(value, self.base_dir)

    # -- tables ----------------------------------------------------------------------------

    def table(
        self, cls: type, d: dict[str, Any], path: Path, ident: Any = None, **extra: Any
    ) -> Any:
        """A model value of ``cls`` from its table ``d`` (``ident``: the table key, if any;
        ``extra``: fields that are not manifest keys). Absent keys take the field's default,
        which is the declared one (``launcher.keys.key``)."""
        layout = _layout(cls)
        values: dict[str, Any] = extra
        if ident is not None:
            values["id"] = ident
        for name, v in d.items():
            s = layout.keys.get(name)
            if s is not None:
                values[s.attr] = self.value(s, v, (*path, name))
        for s in layout.nested:  # keys in tables of their own: [global.pcie-root-port]
            table = d
            for name in s.decl.at:
                table = table.get(name, {})
            if s.name in table:
                values[s.attr] = self.value(s, table[s.name], (*path, *s.decl.at, s.name))
        if layout.pci is not None:
            pci = self.pci(d, path, layout.pci.required)
            if pci is not None:
                values[layout.pci.attr] = pci
        return cls(**values)

    def value(self, s: k.Spec, v: Any, path: Path) -> Any:
        """One key's model value from its manifest value."""
        kind = s.kind
        if kind in _AS_IS:
            return v  # the schema checked it
        if kind == k.ENUM:
            return s.type(v)
        if kind == k.PATH:
            return self.path(v)
        if kind in (k.STRINGS, k.FDS):
            return tuple(v)
        if kind == k.PATHS:
            return tuple(self.path(p) for p in v)
        if kind == k.SIZE:
            return self.size(v, path)
        if kind == k.INTLIST:
            return self.ints(v, path, s.decl.what)
        if kind == k.TEXT:
            return " ".join(v) if isinstance(v, list) else v
        if kind == k.SOCKETS:
            return tuple(self.path(q) if q else q for q in ([v] if isinstance(v, str) else v))
        if kind == k.URI:
            scheme, sep, rest = v.partition(":")
            if sep and scheme.lower() in ("file", "unix") and rest:
                return f"{scheme}:{self.path(rest)}"
            return v
        if kind == k.STRMAP:
            return tuple(v.items())
        if kind == k.LOG:
            return (
                None if v is False else self.table(s.type, v if isinstance(v, dict) else {}, path)
            )
        if kind == k.SERIAL:
            if isinstance(v, str):
                return m.Chardev(SERIAL_ID, m.ChardevBackend(v))
            return self.table(s.type, v, path, SERIAL_ID)
        if kind == k.SECTION:
            return self.table(s.type, v, path)
        if kind == k.TABLE:
            return tuple(self.table(s.type, item, (*path, i), i) for i, item in v.items())
        if kind == k.LIST:
            return tuple(self.table(s.type, item, (*path, i)) for i, item in enumerate(v))
        raise ValueError(f"no loader for kind {kind!r} of {s.name}")

    # -- value syntaxes --------------------------------------------------------------------

    def size(self, value: Any, path: Path) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(path, str(exc), "size-syntax", SIZE_HINT)
            return 0

    def ints(self, value: Any, path: Path, what: str) -> tuple[int, ...]:
        try:
            return parse_int_list(value, what)
        except ValueError as exc:
            self.fail(path, str(exc), "int-list-syntax", INTLIST_HINT)
            return ()

    def pci(self, d: dict[str, Any], path: Path, required: bool) -> m.PciAddress | None:
        """A device's ``bus``/``addr``/``multifunction`` keys (the schema requires ``addr``
        where the device needs one)."""
        if "addr" not in d:
            if "bus" in d or "multifunction" in d:
                key = "bus" if "bus" in d else "multifunction"
                self.fail(
                    (*path, key),
                    f"'{key}' needs 'addr' (the PCI slot)",
                    "pci-addr-required",
                    'add addr = "0x3" (a free slot on the bus)',
                )
            return None
        try:
            slot, func = parse_pci_addr(d["addr"])
        except ValueError as exc:
            self.fail((*path, "addr"), str(exc), "pci-addr-syntax", ADDR_HINT)
            if not required:
                return None
            slot, func = 0, 0
        return m.PciAddress(d.get("bus", "pcie.0"), slot, func, d.get("multifunction"))


def build_manifest(
    data: dict[str, Any], source: str, base_dir: str
) -> tuple[m.Manifest, list[Issue]]:
    """The model for schema-valid ``data`` plus the value-syntax issues found on the way."""
    b = Builder(base_dir)
    manifest = b.table(m.Manifest, data, (), source=source, base_dir=base_dir)
    return manifest, b.issues

"""``Manifest`` → minimal plain data → TOML or YAML text (the inverse of loading).

Used by ``svlaunch import``. It walks the same key declarations as the loader
(``launcher.keys``): the output omits every value equal to its declared default, keeps the
model's key order, writes sizes as ``"512M"``, cpu lists as ``"0-3"``, and paths relative to
``base_dir`` when they share more than the root with it (``../build/vmlinux`` yes,
``/dev/urandom`` no). Loading the dump gives back an equal ``Manifest``.
"""

from __future__ import annotations

import os
from typing import Any

from launcher import keys as k
from launcher import model as m
from launcher.manifest.values import format_int_list, format_size

D = dict[str, Any]


def _rel(path: str, base: str) -> str:
    if not os.path.isabs(path) or not os.path.isabs(base):
        return path
    try:
        common = os.path.commonpath([path, base])
    except ValueError:
        return path
    if len([p for p in common.split(os.sep) if p]) < 2:
        return path
    return os.path.relpath(path, base)


class _Dumper:
    def __init__(self, base: str) -> None:
        self.base = base

    def table(self, obj: Any, table_item: bool = False) -> D:
        """The keys of a model value that differ from their defaults (required ones always)."""
        d: D = {}
        for s in k.specs(type(obj)):
            if table_item and s.attr == "id":
                continue  # the table key
            value = getattr(obj, s.attr)
            if s.kind == k.PCI:
                self.pci(d, value)
                continue
            if not s.required and (value is None or value == s.default_value()):
                continue
            target = d
            for name in s.decl.at:
                target = target.setdefault(name, {})
            target[s.name] = self.value(s, value)
        return d

    def value(self, s: k.Spec, v: Any) -> Any:
        kind = s.kind
        if kind == k.ENUM:
            return v.value
        if kind == k.PATH:
            return _rel(v, self.base)
        if kind in (k.STRINGS, k.FDS):
            return list(v)
        if kind == k.PATHS:
            return [_rel(p, self.base) for p in v]
        if kind == k.SIZE:
            return format_size(v)
        if kind == k.INTLIST:
            return format_int_list(v)
        if kind == k.SOCKETS:
            paths = [_rel(q, self.base) for q in v]
            return paths[0] if len(paths) == 1 else paths
        if kind == k.URI:
            scheme, _, rest = v.partition(":")
            return (
                f"{scheme}:{_rel(rest, self.base)}"
                if scheme.lower() in ("file", "unix") and rest
                else v
            )
        if kind == k.STRMAP:
            return dict(v)
        if kind == k.LOG:
            return self.table(v) or True
        if kind == k.SERIAL:
            d = self.table(v, table_item=True)
            return d["backend"] if list(d) == ["backend"] else d
        if kind == k.SECTION:
            return self.table(v)
        if kind == k.TABLE:
            return {item.id: self.table(item, table_item=True) for item in v}
        if kind == k.LIST:
            return [self.table(item) for item in v]
        return v  # bool, int, str, text, vm-name

    @staticmethod
    def pci(d: D, pci: m.PciAddress | None) -> None:
        if pci is not None:
            if pci.bus != "pcie.0":
                d["bus"] = pci.bus
            d["addr"] = pci.addr
            if pci.multifunction is not None:
                d["multifunction"] = pci.multifunction


def manifest_to_data(manifest: m.Manifest, base_dir: str | None = None) -> D:
    """Minimal plain data for ``manifest`` (defaults omitted, the model's key order)."""
    base = os.path.abspath(base_dir if base_dir is not None else manifest.base_dir)
    return _Dumper(base).table(manifest)


def dump_manifest(manifest: m.Manifest, fmt: str = "toml", base_dir: str | None = None) -> str:
    """The manifest as TOML or YAML text that loads back to an equal ``Manifest``."""
    data = manifest_to_data(manifest, base_dir)
    if fmt == "toml":
        from launcher.manifest.tomlw import dumps

        return dumps(data)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(
            data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
        )
    raise ValueError(f"unknown manifest format {fmt!r}")

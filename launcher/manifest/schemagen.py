"""The manifest's JSON Schema and the docs' field reference, generated from the model.

Every key's type, default, documentation, StratoVirt spelling (``x-stratovirt``), plan field
(``x-plan``) and apply mode (``x-apply``) come from its declaration on the model field
(``launcher.keys``); this module only spells them in JSON Schema. Its output is
``launcher/manifest/svlaunch.schema.json`` (``schema/svlaunch.schema.json`` links to it), which
the loader's shape check reads at run time (``launcher.manifest.schema``):

    python -m launcher.manifest.schemagen > launcher/manifest/svlaunch.schema.json
    python -m launcher.manifest.schemagen --markdown   # the field table of docs/manifest.md

A test keeps the file and the docs equal to this output; ``svlaunch schema`` prints it.

The schema checks shape only (keys, types, enums, syntax patterns). Ranges and cross-field
rules live in ``launcher.validate`` where messages can name values, limits and fixes.
"""

from __future__ import annotations

import sys
from typing import Any

from engine.names import VM_NAME_PATTERN
from launcher import keys as k
from launcher.manifest.schema_vocab import (  # re-exported: other modules import them from here
    ADDR_PATTERN,
    INTLIST_PATTERN,
    SCHEMA_ID,
    SIZE_PATTERN,
    J,
    array_of,
    boolean,
    enum,
    int_list,
    integer,
    intlist,
    obj,
    path,
    pci_props,
    prop,
    size,
    str_or_list,
    string,
    table_of,
)

__all__ = [
    "ADDR_PATTERN",
    "INTLIST_PATTERN",
    "SCHEMA_ID",
    "SIZE_PATTERN",
    "build_schema",
    "markdown_reference",
    "schema_json",
]


def build_schema() -> J:
    """The whole manifest schema (JSON Schema draft 2020-12)."""
    from launcher import model as m

    props, required = _properties(m.Manifest)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "svlaunch manifest",
        "description": "One VM for svlaunch (StratoVirt v2.2.0 semantics). TOML or YAML.",
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": {
            "$schema": string("Schema URL for editors (ignored).", minLength=1),
            **props,
        },
    }


def sv_text(sv: str | tuple[str, ...] | None, kind: str = "") -> str:
    """How a key reads on StratoVirt's command line, for people: ``-drive readonly=on|off``."""
    if not isinstance(sv, tuple):
        return sv or ""
    option, name, *spelling = sv
    if option in ("memory-backend-ram", "rng-random"):
        option = f"-object {option}"
    elif option.startswith(("virtio-", "vhost-")):
        option = f"-device {option}-*"
    elif not option.startswith("-"):
        option = f"-device {option}"
    if spelling == ["flag"]:
        return f"{option} {name}"
    return f"{option} {name}=" + ("on|off" if kind == k.BOOL else "")


def _properties(cls: type, table_item: bool = False) -> tuple[dict[str, J], list[str]]:
    """The schema properties of a model class and its required keys, in declaration order."""
    from launcher import model as m

    props: dict[str, J] = {}
    required: list[str] = []
    for s in k.specs(cls):
        if table_item and s.attr == "id":
            continue  # the table key ([drives.<id>]) is the id
        if s.kind == k.PCI:
            keys = s.decl.values or ("bus", "addr", "multifunction")
            props.update((n, v) for n, v in pci_props().items() if n in keys)
            if s.required:
                required.append("addr")
            continue
        target = props
        for depth, name in enumerate(s.decl.at):  # keys in tables of their own: [global.x]
            doc, sv = m.GROUP_TABLES[s.decl.at[: depth + 1]]
            group = target.setdefault(name, obj(doc, {}, sv=sv or None))
            target = group["properties"]
        target[s.name] = _annotated(_schema(s), s)
        if s.required:
            required.append(s.name)
    return props, required


def _annotated(schema: J, s: k.Spec) -> J:
    if s.decl.plan:
        schema["x-plan"] = s.decl.plan
    if s.kind != k.SECTION:
        schema["x-apply"] = str(s.decl.apply)
    return schema


def _describe(s: k.Spec) -> str:
    doc = s.decl.doc
    if s.decl.limits is not None:
        doc += f" Allowed: {s.decl.limits.describe()}."
    return doc


def _default(s: k.Spec) -> Any:
    d = s.decl.default
    if d is None or d is k.REQUIRED or isinstance(d, type) or d == ():
        return None
    if s.kind == k.SIZE:
        from launcher.manifest.values import format_size

        return format_size(d)
    return list(d) if isinstance(d, tuple) else getattr(d, "value", d)


def _schema(s: k.Spec) -> J:
    doc, default, sv, kind = _describe(s), _default(s), sv_text(s.decl.sv, s.kind), s.kind
    nonempty = {"minLength": 1} if s.decl.nonempty else {}
    if kind == k.VM_NAME:
        return string(doc, sv=sv, pattern=VM_NAME_PATTERN)
    if kind == k.BOOL:
        return boolean(doc, default, sv)
    if kind == k.INT:
        return integer(doc, default, sv)
    if kind == k.STR and s.decl.values:
        return enum(doc, list(s.decl.values), default, sv)
    if kind in (k.STR, k.URI):
        return string(doc, default, sv, **nonempty)
    if kind == k.ENUM:
        return enum(doc, [e.value for e in s.type], default, sv)
    if kind == k.PATH:
        return path(doc, default, sv)
    if kind in (k.STRINGS, k.PATHS):
        suffix = " Relative paths resolve against the manifest's folder." if kind == k.PATHS else ""
        return array_of(doc + suffix, {"type": "string", "minLength": 1}, sv)
    if kind == k.SIZE:
        return size(doc, default, sv)
    if kind == k.INTLIST:
        schema = intlist(doc, sv)
        if default is not None:
            schema["default"] = default
        return schema
    if kind == k.FDS:
        return int_list(doc, sv)
    if kind in (k.TEXT, k.SOCKETS):
        return str_or_list(doc, None, sv)
    if kind == k.STRMAP:
        return prop({"type": "object", "additionalProperties": {"type": "string"}}, doc, None, sv)
    if kind == k.LOG:
        return prop({"anyOf": [{"type": "boolean"}, _table(s.type, s.decl.item)]}, doc, None, sv)
    if kind == k.SERIAL:
        backends = {"type": "string", "enum": ["stdio", "pty"]}
        return prop({"anyOf": [backends, _table(s.type, s.decl.item, True)]}, doc, None, sv)
    if kind == k.SECTION:
        return _table(s.type, doc, sv=sv)
    if kind == k.TABLE:
        return table_of(doc, _table(s.type, s.decl.item, True), sv)
    if kind == k.LIST:
        return array_of(doc, _table(s.type, s.decl.item), sv)
    raise ValueError(f"no schema for kind {kind!r} of {s.name}")


def _table(cls: type, doc: str, table_item: bool = False, sv: str = "") -> J:
    props, required = _properties(cls, table_item)
    return obj(doc, props, tuple(required), sv or None)


def schema_json() -> str:
    """The schema as the text of ``launcher/manifest/svlaunch.schema.json``."""
    import json  # not at the top: loading a manifest needs build_schema() only

    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def markdown_reference() -> str:
    """The field reference of ``docs/manifest.md``: one row per key, every key of the schema."""
    from launcher.manifest.schema_doc import markdown_table

    return markdown_table(build_schema())


if __name__ == "__main__":
    sys.stdout.write(markdown_reference() if sys.argv[1:] == ["--markdown"] else schema_json())

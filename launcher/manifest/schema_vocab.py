"""The vocabulary the manifest schema is written in: JSON Schema fragments with a description,
a default and the StratoVirt option each key compiles to (``x-stratovirt``).

Used by ``schemagen``, which writes the schema from the model's declarations, and by ``schema``
(the syntax patterns), which must not need the whole schema to check a value.
"""

from __future__ import annotations

from typing import Any

SCHEMA_ID = "https://svlaunch.dev/schema/svlaunch.schema.json"
SIZE_PATTERN = r"^\s*[0-9]+\s*([KMGTkmgt](i?B)?|B)?\s*$"
INTLIST_PATTERN = r"^\s*\[?\s*[0-9]+(\s*-\s*[0-9]+)?(\s*[,:]\s*[0-9]+(\s*-\s*[0-9]+)?)*\s*\]?\s*$"
ADDR_PATTERN = r"^\s*(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+))?\s*$"

J = dict[str, Any]


def prop(schema: J, desc: str, default: Any = None, sv: str | None = None) -> J:
    """``schema`` with its description, default and StratoVirt option (``x-stratovirt``)."""
    schema = dict(schema)
    schema["description"] = desc
    if default is not None:
        schema["default"] = default
    if sv:
        schema["x-stratovirt"] = sv
    return schema


def string(desc: str, default: str | None = None, sv: str | None = None, **kw: Any) -> J:
    return prop({"type": "string", **kw}, desc, default, sv)


def path(desc: str, default: str | None = None, sv: str | None = None) -> J:
    return string(
        desc + " Relative paths resolve against the manifest's folder.", default, sv, minLength=1
    )


def boolean(desc: str, default: bool | None = None, sv: str | None = None) -> J:
    return prop({"type": "boolean"}, desc, default, sv)


def integer(desc: str, default: int | None = None, sv: str | None = None, **kw: Any) -> J:
    return prop({"type": "integer", "minimum": 0, **kw}, desc, default, sv)


def enum(desc: str, values: list[str], default: str | None = None, sv: str | None = None) -> J:
    return prop({"type": "string", "enum": values}, desc, default, sv)


def size(desc: str, default: str | None = None, sv: str | None = None) -> J:
    return prop(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ]
        },
        desc + " An integer number of bytes, or a string with a K/M/G/T (or KiB/MiB/GiB/TiB)"
        ' suffix: "512M", "1G".',
        default,
        sv,
    )


def intlist(desc: str, sv: str | None = None) -> J:
    return prop(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": INTLIST_PATTERN},
            ]
        },
        desc + ' A list of integers or a string like "0-1,4".',
        None,
        sv,
    )


def str_or_list(desc: str, default: Any = None, sv: str | None = None) -> J:
    return prop(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ]
        },
        desc,
        default,
        sv,
    )


def int_list(desc: str, sv: str | None = None) -> J:
    return prop({"type": "array", "items": {"type": "integer", "minimum": 0}}, desc, None, sv)


def obj(desc: str, props: dict[str, J], required: tuple[str, ...] = (), sv: str | None = None) -> J:
    schema: J = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        schema["required"] = list(required)
    return prop(schema, desc, None, sv)


def table_of(desc: str, item: J, sv: str | None = None) -> J:
    """A table keyed by id (``[drives.rootfs]``): the key is the id StratoVirt sees."""
    return prop(
        {"type": "object", "additionalProperties": item, "propertyNames": {"minLength": 1}},
        desc + " Keyed by id; declaration order is kept.",
        None,
        sv,
    )


def array_of(desc: str, item: J, sv: str | None = None) -> J:
    return prop({"type": "array", "items": item}, desc, None, sv)


def pci_props() -> dict[str, J]:
    """The PCI placement keys a device table holds (``bus``, ``addr``, ``multifunction``)."""
    return {
        "bus": string(
            'PCI bus: "pcie.0" or a root port id (pci transport only).',
            "pcie.0",
            sv="bus=",
            minLength=1,
        ),
        "addr": prop(
            {
                "anyOf": [
                    {"type": "string", "pattern": ADDR_PATTERN},
                    {"type": "integer", "minimum": 0},
                ]
            },
            'PCI slot and function: "0x3" or "0x3.0x1"; digits without 0x are decimal'
            " (pci transport only).",
            sv="addr=",
        ),
        "multifunction": boolean(
            "Allow other functions in this slot (pci only).", False, sv="multifunction=on|off"
        ),
    }

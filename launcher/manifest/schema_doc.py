"""``docs/manifest.md``'s field reference, rendered from a schema: one row per key.

Pure (schema in, markdown out) so it needs nothing from ``schemagen``, which calls it.
"""

from __future__ import annotations

import json
from typing import Any

J = dict[str, Any]


def _type_text(s: J) -> str:
    if "anyOf" in s:
        return " or ".join(_type_text(x) for x in s["anyOf"])
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"])
    t = s.get("type", "")
    if t == "string" and "pattern" in s:
        return "string (syntax)"
    if t == "array":
        return f"list of {_type_text(s.get('items', {}))}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return "table by id"
    return {"object": "table"}.get(t, t) or "value"


def markdown_table(schema: J) -> str:
    """The field reference of ``docs/manifest.md``: one row per key, every key of the schema."""
    rows = [
        "| key | type | default | StratoVirt | engine plan | on a running VM | description |",
        "|---|---|---|---|---|---|---|",
    ]

    def walk(s: J, prefix: str) -> None:
        props = s.get("properties", {})
        if not props and isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"], prefix + ".<id>")
            return
        if not props and s.get("type") == "array" and isinstance(s.get("items"), dict):
            walk(s["items"], prefix + "[]")
            return
        for sub in s.get("anyOf", []):
            if sub.get("type") == "object":
                walk(sub, prefix)
        for key, sub in props.items():
            if key == "$schema":
                continue
            path = f"{prefix}.{key}" if prefix else key
            default = sub.get("default")
            dtext = "" if default is None else f"`{json.dumps(default)}`"
            sv = sub.get("x-stratovirt", "").replace("|", "\\|")
            plan = sub.get("x-plan", "")
            desc = sub.get("description", "").replace("|", "\\|")
            req = " **required**" if key in s.get("required", ()) else ""
            rows.append(
                f"| `{path}` | {_type_text(sub)} | {dtext} | {sv and '`' + sv + '`'} "
                f"| {plan and '`' + plan + '`'} | {sub.get('x-apply', '')} | {desc}{req} |"
            )
            walk(sub, path)

    walk(schema, "")
    return "\n".join(rows) + "\n"

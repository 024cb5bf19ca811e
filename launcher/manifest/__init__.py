"""Manifest loading (TOML/YAML with marks), schema, model building and dumping.

Public API (stable; other packages code against it):

- ``load_manifest(path) -> Manifest`` (raises ``InvalidInput`` with every located issue)
- ``load_file(path) -> (Manifest | None, list[Issue])``
- ``load_text(text, fmt, source) -> (Manifest | None, list[Issue])``
- ``dump_manifest(manifest, fmt="toml"|"yaml") -> str`` and ``manifest_to_data(manifest)``

The names resolve on first use (PEP 562 ``__getattr__``) to the functions in ``load`` and
``dump``, so ``import launcher.manifest`` stays cheap and each signature is written once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.manifest.dump import dump_manifest, manifest_to_data
    from launcher.manifest.load import load_file, load_manifest, load_text

__all__ = ["dump_manifest", "load_file", "load_manifest", "load_text", "manifest_to_data"]

#: public name -> the submodule that defines it
_HOME = {
    "load_manifest": "load",
    "load_file": "load",
    "load_text": "load",
    "manifest_to_data": "dump",
    "dump_manifest": "dump",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value

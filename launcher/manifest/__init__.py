"""Manifest loading (TOML/YAML with marks), schema, model building and dumping.

Public API (stable; other packages code against it):

- ``load_manifest(path) -> Manifest`` (raises ``InvalidInput`` with every located issue)
- ``load_text(text, fmt, source) -> (Manifest | None, list[Issue])``
- ``dump_manifest(manifest, fmt="toml"|"yaml") -> str`` and ``manifest_to_data(manifest)``

Submodules are imported on first use so ``import launcher.manifest`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.errors import Issue
    from launcher.model import Manifest

__all__ = ["dump_manifest", "load_file", "load_manifest", "load_text", "manifest_to_data"]


def load_manifest(
    path: str, *, target: str = "engine", warnings: list[Issue] | None = None
) -> Manifest:
    from launcher.manifest.load import load_manifest as impl

    return impl(path, target=target, warnings=warnings)


def load_file(path: str, *, target: str = "engine") -> tuple[Manifest | None, list[Issue]]:
    from launcher.manifest.load import load_file as impl

    return impl(path, target=target)


def load_text(
    text: str,
    fmt: str,
    source: str = "<memory>",
    base_dir: str | None = None,
    *,
    target: str = "engine",
) -> tuple[Manifest | None, list[Issue]]:
    from launcher.manifest.load import load_text as impl

    return impl(text, fmt, source, base_dir, target=target)


def manifest_to_data(manifest: Manifest, base_dir: str | None = None) -> dict[str, Any]:
    from launcher.manifest.dump import manifest_to_data as impl

    return impl(manifest, base_dir)


def dump_manifest(manifest: Manifest, fmt: str = "toml", base_dir: str | None = None) -> str:
    from launcher.manifest.dump import dump_manifest as impl

    return impl(manifest, fmt, base_dir)

"""What the argv importer accumulates while it walks the options, and where each piece came from.

Backends are declared by one option and consumed by another (StratoVirt's binding rules: each
drive, netdev, chardev, rng object and memory object has at most one consumer), so the importer
keeps them in ordered pools with a consumed flag. ``where`` maps manifest key paths to argv
positions so any later issue (including ``check_model``'s) can be located at the argv element.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from launcher.compile.stratovirt.common import PathKind
from launcher.compile.stratovirt.props import argv_issue
from launcher.errors import Issue
from launcher.model import Chardev, Machine, MachineType

# (argv text, kind, argv index) -> absolute host path
ImportPathFn = Callable[[str, PathKind, int], str]


def base_dir_paths(base_dir: str) -> ImportPathFn:
    """Relative argv paths are relative to StratoVirt's working directory (``base_dir``)."""
    root = os.path.abspath(base_dir)

    def resolve(text: str, kind: PathKind, index: int) -> str:
        return os.path.normpath(os.path.join(root, text))

    return resolve


@dataclass
class Pooled:
    """A declared backend: its fields so far, its argv position, and whether it is consumed."""

    fields: dict[str, Any]
    index: int
    used_by: int | None = None  # argv index of the consumer


@dataclass
class State:
    paths: ImportPathFn
    machine: Machine = field(default_factory=Machine)
    cpus: int = 1
    warnings: list[Issue] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # top-level Manifest fields
    drives: dict[str, Pooled] = field(default_factory=dict)
    pflash: dict[int, dict[str, Any]] = field(default_factory=dict)
    netdevs: dict[str, Pooled] = field(default_factory=dict)
    chardevs: dict[str, Pooled] = field(default_factory=dict)
    rng_objects: dict[str, Pooled] = field(default_factory=dict)
    mem_objects: dict[str, Pooled] = field(default_factory=dict)
    iothreads: list[str] = field(default_factory=list)
    numa_nodes: list[dict[str, Any]] = field(default_factory=list)
    numa_dists: list[dict[str, Any]] = field(default_factory=list)
    serial: Chardev | None = None
    # devices, in argv order
    virtio_serial: dict[str, Any] | None = None
    consoles: list[dict[str, Any]] = field(default_factory=list)
    vsock: dict[str, Any] | None = None
    balloon: dict[str, Any] | None = None
    rngs: list[dict[str, Any]] = field(default_factory=list)
    root_ports: list[dict[str, Any]] = field(default_factory=list)
    vfio: list[dict[str, Any]] = field(default_factory=list)
    usb: dict[str, Any] = field(default_factory=dict)
    buses: set[str] = field(default_factory=lambda: {"pcie.0"})
    pci_ids: set[str] = field(default_factory=set)

    @property
    def standard(self) -> bool:
        return self.machine.type.is_standard

    @property
    def microvm(self) -> bool:
        return self.machine.type is MachineType.MICROVM

    def warn(self, message: str, index: int, hint: str = "", path: str = "") -> None:
        issue = argv_issue(message, index, 0, hint, path=path)
        self.warnings.append(
            Issue(issue.message, issue.path, issue.hint, issue.mark, "warning", "argv")
        )

    def at(self, path: str, index: int) -> None:
        self.where.setdefault(path, index)

    def path(self, text: str, kind: PathKind, index: int) -> str:
        return self.paths(text, kind, index)


def locate(issues: list[Issue], where: dict[str, int]) -> list[Issue]:
    """Place issues that have a manifest key path but no mark at the argv element it came from."""

    def norm(p: str) -> str:
        return p.replace("_", "-")

    keys = sorted(((norm(k), i) for k, i in where.items()), key=lambda kv: -len(kv[0]))
    out = []
    for issue in issues:
        if issue.mark is None and issue.path:
            p = norm(issue.path)
            for key, index in keys:
                if p == key or p.startswith(key + ".") or p.startswith(key + "["):
                    issue = issue.located(argv_issue("", index).mark)
                    break
        out.append(issue)
    return out

"""Every field of the engine plan is read by the engine: a field nobody reads is a manifest key
that is accepted, validated, compiled and then ignored (issue 13: every key the engine receives
changes its behaviour or is refused).

"Read" is an attribute load (``spec.queue_size``) or a ``getattr`` with the name, anywhere in
``engine/`` outside the plan itself and ``engine/device_rules.py`` (checking a value is not
using it). The known exceptions are listed by name with the reason; the list can only shrink:
when one becomes read, ``test_known_exceptions_are_still_unread`` asks to remove it.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import engine.plan as plan

ENGINE = Path(__file__).resolve().parents[2] / "engine"
NOT_USES = {ENGINE / "plan.py", ENGINE / "device_rules.py"}

KNOWN_UNREAD = {
    # svlaunch up detaches the engine itself and clears it (launcher/commands/up.py)
    ("Plan", "daemonize"): "cleared by svlaunch up",
    # no vCPU hot-plug: maxcpus > cpus is refused for the engine (engine_plan.unsupported_features)
    ("TopologyPlan", "maxcpus"): "no vCPU hot-plug",
}


def engine_reads(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(str(node.args[1].value))
    return names


def plan_fields() -> list[tuple[str, str]]:
    classes = [
        c
        for c in vars(plan).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == plan.__name__
    ]
    return sorted((c.__name__, f.name) for c in classes for f in dataclasses.fields(c))


def unread(files: list[Path]) -> set[tuple[str, str]]:
    reads = engine_reads(files)
    return {(cls, name) for cls, name in plan_fields() if name not in reads}


FILES = [p for p in sorted(ENGINE.rglob("*.py")) if p not in NOT_USES]


def test_every_plan_field_is_read_by_the_engine() -> None:
    assert unread(FILES) - set(KNOWN_UNREAD) == set(), "a plan field nobody reads"


def test_known_exceptions_are_still_unread() -> None:
    now_read = set(KNOWN_UNREAD) - unread(FILES)
    assert now_read == set(), f"read now: remove {sorted(now_read)} from KNOWN_UNREAD"


def test_the_check_can_fail(tmp_path: Path) -> None:
    """Without the modules that read ``queue_size`` it is reported."""
    readers = {p for p in FILES if "queue_size" in engine_reads([p])}
    assert readers
    assert ("BlkPlan", "queue_size") in unread([p for p in FILES if p not in readers])
    extra = tmp_path / "reader.py"
    extra.write_text("def f(spec):\n    return getattr(spec, 'aio')\n")
    assert ("BlkPlan", "aio") not in unread([*FILES, extra])

"""Every module of ``launcher`` and ``engine`` imports on its own, and none takes part in a cycle.

Each module is imported in a fresh interpreter (a cycle or a broken import surfaces only when
its module is the first one loaded), and the module-level import graph (``TYPE_CHECKING`` blocks
and imports inside functions left out: those are the lazy ones) must have no cycle at all, even
one that today's import order happens to survive. Last, the engine's start-up path must not
generate dataclass code for frozen classes: those use ``launcher.frozen.frozen``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("launcher", "engine")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    def try_import(name: str) -> tuple[str, int, str]:
        p = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return name, p.returncode, p.stderr.strip()[-600:]

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(try_import, sorted(MODULES)))
    broken = [f"{name}: {err}" for name, rc, err in results if rc != 0]
    assert not broken, "\n".join(broken)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not under TYPE_CHECKING, not in defs)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for h in node.handlers:
                todo += h.body
        elif isinstance(node, ast.With):
            todo += node.body
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules its top-level code imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in modules:  # ``import a.b.c`` / ``from a import name``
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _parent_edges_dropped(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A submodule importing its own package's ``__init__`` is how re-exports work, not a cycle
    by itself; the package importing that submodule back would be, and stays in the graph."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_import_cycles() -> None:
    found = cycles(_parent_edges_dropped(import_graph(MODULES)))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    """The check above can fail: a two-module cycle and a relative import are found."""
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p.b import x\n")
    (pkg / "b.py").write_text("from . import a\nif TYPE_CHECKING:\n    import p.c\n")
    (pkg / "c.py").write_text("import p.b\n")
    mods = {"p": pkg / "__init__.py", **{f"p.{n}": pkg / f"{n}.py" for n in "abc"}}
    assert cycles(_parent_edges_dropped(import_graph(mods))) == [["p.a", "p.b"]]


#: dataclasses whose code the start-up path may generate (none: ``@frozen`` and ``@record``)
MUTABLE_OK: set[str] = set()

#: what the engine's start-up path must not import before the first KVM_RUN (~20 ms together);
#: ``typing`` (and its ``re``) still comes with ``launcher.compile.apicid``'s runtime ``Protocol``.
SLOW_MODULES = ("dataclasses", "inspect", "logging", "json", "signal")

_STARTUP_PROBE = """
import sys
plan_text, dump, slow = sys.argv[1], sys.argv[2] == "dump", sys.argv[3:]
from engine.__main__ import boot  # what engine_argv runs
from launcher.compile.plan import Plan
import engine.vm, engine.machine.builder, engine.machine.acpi.builder
plan = Plan.loads(plan_text)
if dump:
    plan.dumps()
print(" ".join(m for m in slow if m in sys.modules))
"""


def _startup_imports(plan_text: str, *, dump: bool) -> list[str]:
    """The slow modules loaded by the start-up path, in a fresh ``-I -S`` interpreter (no
    ``site``: its .pth finder would import ``re`` itself), with ``engine_argv``'s sys.path."""
    from engine.__main__ import engine_argv

    code = engine_argv("x")[4].split("; from engine")[0]  # the sys.path set-up
    p = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code + "\n" + _STARTUP_PROBE, plan_text,
         "dump" if dump else "-", *SLOW_MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_engine_start_up_imports_none_of_the_slow_modules() -> None:
    """The start-up path (plan read, engine modules) leaves out the modules that cost the most;
    the probe sees one when it is there (``Plan.dumps`` imports json)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from tiny_guest import make_plan
    finally:
        sys.path.pop(0)
    text = make_plan("/nonexistent/kernel").dumps()
    assert _startup_imports(text, dump=False) == []
    assert "json" in _startup_imports(text, dump=True)


_PROBE = """
import dataclasses, sys
made = []
real_exec = exec
def counting_exec(src, g=None, l=None):
    f = sys._getframe(1)
    while f is not None and f.f_code.co_name != "_process_class":
        f = f.f_back
    if f is not None:
        cls = f.f_locals["cls"]
        made.append(f"{cls.__module__}.{cls.__qualname__}")
    real_exec(src, g, l)
dataclasses.exec = counting_exec
@dataclasses.dataclass(frozen=True)
class Canary:
    x: int
if not made:
    print("HOOK-UNSUPPORTED")
    raise SystemExit(0)
made.clear()
import engine.__main__, engine.vm, engine.machine.builder  # what the engine loads to boot
print("\\n".join(sorted(set(made))))
"""


def test_engine_start_up_generates_no_code_for_frozen_dataclasses() -> None:
    p = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    if p.stdout.strip() == "HOOK-UNSUPPORTED":
        pytest.skip("this Python's dataclasses does not compile through a module-level exec")
    made = set(p.stdout.split())
    assert made <= MUTABLE_OK, f"use launcher.frozen.frozen for: {sorted(made - MUTABLE_OK)}"

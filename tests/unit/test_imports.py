"""Every module of ``launcher`` and ``engine`` imports on its own, and none takes part in a cycle.

Each module is imported in a fresh interpreter (a cycle or a broken import surfaces only when
its module is the first one loaded), and the module-level import graph (``TYPE_CHECKING`` blocks
and imports inside functions left out: those are the lazy ones) must have no cycle at all, even
one that today's import order happens to survive. Last, dependencies point one way: nothing in
``engine/`` imports ``launcher/``, not even lazily.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def _all_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Every import in a module, lazy ones inside functions and TYPE_CHECKING blocks included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_the_engine_imports_nothing_of_the_launcher() -> None:
    """Dependencies point one way: the launcher uses the engine's plan contract, never back."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "engine"
        for line, target in _all_imports(ast.parse(path.read_text(), str(path)))
        if target.split(".")[0] == "launcher"
    ]
    assert not found, "the engine imports the launcher:\n" + "\n".join(found)


def test_the_one_way_check_sees_an_import(tmp_path: Path) -> None:
    """The check above can fail: a lazy import inside a function is an import too."""
    tree = ast.parse("def f():\n    from launcher import model\n    import launcher.errors\n")
    assert [t for _, t in _all_imports(tree)] == ["launcher", "launcher.errors"]


_STARTUP_PROBE = """
import sys
from engine.__main__ import boot  # what engine_argv runs
from engine.plan import Plan
import engine.vm, engine.machine.builder, engine.machine.acpi.builder, engine.qmp.server
Plan.loads(sys.argv[1])
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("launcher", "rich"))))
"""


def test_the_engine_process_loads_no_launcher_module() -> None:
    """The engine runs from its plan alone (the sandbox mounts only ``engine/`` into the jail)."""
    from engine.__main__ import engine_argv

    sys.path.insert(0, str(ROOT / "tests" / "support"))
    try:
        from tiny_guest import make_plan
    finally:
        sys.path.pop(0)
    code = engine_argv("x")[4].split("; from engine")[0]  # the sys.path set-up
    p = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code + "\n" + _STARTUP_PROBE,
         make_plan("/nonexistent/kernel").dumps()],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == []

"""Everything a forked engine may need, loaded once in the pool before any fork.

A forked engine must never read code from disk: a jail hides most of it, and every late import
costs start-up time and private memory in each VM. So the pool imports every module that any
file of the ``engine`` package imports, at module level or lazily inside a function (found by
reading the sources with ``ast``, so a new lazy import is covered without a list to keep), runs
the lazy look-ups the engine does at run time (the libraries it ``dlopen``s, the seccomp
programs it compiles, the sandbox's Python runtime closure), and records the result:
``PRELOADED`` is what ``sys.modules`` held, so a forked engine can say what it imported late.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import threading
from typing import Any

ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: modules the engine names but never imports on Linux (other platforms' branches)
SKIP = frozenset({"msvcrt", "winreg", "_winapi", "nt", "tomli"})

PRELOADED: frozenset[str] = frozenset()
#: what failed to import (module -> reason): shown by ``svlaunch pool status``
FAILED: dict[str, str] = {}
#: the sandbox's runtime closure (``engine.ozone.runtime.discover``), or None
RUNTIME: Any = None


def engine_sources() -> list[str]:
    out = []
    for dirpath, dirnames, files in os.walk(ENGINE_DIR):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _package_of(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ENGINE_DIR))[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def imported_names(path: str) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for every import statement in the file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    module = _package_of(path)
    is_pkg = path.endswith("__init__.py")
    out: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*parts, base] if base else parts)
            out.append((base, tuple(a.name for a in node.names if a.name != "*")))
    return out


def import_all() -> None:
    """Import every module the engine's sources name (and the names taken from them)."""
    for path in engine_sources():
        FAILED.pop(_package_of(path), None)
        for module, names in imported_names(path):
            if module.split(".")[0] in SKIP or module == "__future__":
                continue
            try:
                mod = importlib.import_module(module)
            except Exception as e:  # an optional dependency: the engine says so when used
                FAILED[module] = f"{type(e).__name__}: {e}"
                continue
            for name in names:
                if not hasattr(mod, name):  # a submodule, or a lazy attribute
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except Exception:
                        pass
                else:
                    getattr(mod, name)
    for path in engine_sources():  # modules that nothing imports (entry points)
        name = _package_of(path)
        if name not in sys.modules and not name.endswith("__main__"):
            try:
                importlib.import_module(name)
            except Exception as e:
                FAILED[name] = f"{type(e).__name__}: {e}"


def warm_run_time_lookups() -> None:
    """What the engine looks up lazily while it runs: load it here, once, for every fork."""
    global RUNTIME
    from engine import seccomp
    from engine.machine import decompress
    from engine.seccomp_lists import ROLES

    for lib in ("liblz4.so.1", "libzstd.so.1"):  # bzImage payloads
        decompress._dlopen(lib)  # ctypes keeps the library mapped; a later dlopen reuses it
    for role in ROLES:  # libseccomp's compile, a few ms per role and VM otherwise
        for how in ("kill", "log"):
            try:
                seccomp._cache[(role, how)] = seccomp.compile_bpf(role, how)
            except Exception as e:
                FAILED[f"seccomp:{role}"] = f"{type(e).__name__}: {e}"
    if os.geteuid() == 0:  # the sandbox needs root; its closure is cached as the sandbox does
        try:
            from engine.ozone.runtime import discover
            from engine.ozone.state import DEFAULT_STATE_DIR

            RUNTIME = discover(DEFAULT_STATE_DIR)
        except Exception as e:
            FAILED["sandbox runtime"] = f"{type(e).__name__}: {e}"


def preload() -> None:
    """Load everything, then check that the pool is still single-threaded (fork copies only
    the calling thread: a lock held by another thread would stay locked in every child)."""
    global PRELOADED
    import_all()
    warm_run_time_lookups()
    import logging

    logging.getLogger("engine")  # the engine's loggers hang below it
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise RuntimeError("a preloaded module started a thread: the pool cannot fork safely")
    PRELOADED = frozenset(sys.modules)


def late_imports() -> list[str]:
    """Modules imported since ``preload`` (in a forked engine: what it had to read from disk)."""
    return sorted(set(sys.modules) - PRELOADED) if PRELOADED else []

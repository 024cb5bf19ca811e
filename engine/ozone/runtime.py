"""What a Python engine needs inside the jail, read-only, at the same paths as on the host.

A static binary is not an option for a Python engine, so the jail gets read-only bind mounts of:
the interpreter binary (and its symlink chain, e.g. ``.venv/bin/python`` → pyenv's ``python3.11``),
the standard library, the venv's ``pyvenv.cfg`` and ``site-packages``, the engine package (located
through the import system, so an editable install works; the launcher stays outside), the
shared libraries that the interpreter and its extension modules link against (their ``ldd``
closure, minus GUI/terminal/TLS extensions the engine never imports), and ``/etc/ld.so.cache``.
Same paths inside and out means nothing is rewritten (``sys.prefix``, the editable finder and
tracebacks all stay valid). The ``ldd`` closure is cached, keyed by the files' mtimes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

#: Extension modules whose libraries (X11, ncurses, OpenSSL, sqlite...) stay out of the jail.
SKIP_EXTENSIONS = ("_tkinter", "_curses", "_curses_panel", "readline", "_sqlite3", "_dbm", "_gdbm", "nis", "_ssl",
                   "_hashlib", "_crypt", "_uuid", "_ctypes_test", "_testcapi", "_testinternalcapi",
                   "_testbuffer", "_testimportmultiple", "_testmultiphase", "xxlimited")  # fmt: skip
PROJECT_PACKAGES = ("engine",)


@dataclass(frozen=True)
class Runtime:
    """The interpreter to exec in the jail and the host paths to mount read-only for it."""

    executable: str
    paths: tuple[str, ...]  # files or dirs, bound read-only at the same path
    #: dirs holding the project's packages, for ``PYTHONPATH`` in the jail (an editable install
    #: finds them through its site-packages hook anyway; a plain checkout, as in the rig, not)
    pythonpath: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        return [self.executable, "-B", *args]


def _ext_modules(dirs: list[str]) -> list[str]:
    """Extension modules under ``dirs`` (os.walk: a third of glob's cost, which matters in the
    rig where every supervisor start walks dist-packages under TCG)."""
    out = []
    for d in dirs:
        for dirpath, dirnames, files in os.walk(d):
            dirnames[:] = [n for n in dirnames if n != "__pycache__"]
            for name in files:
                if name.endswith(".so") and name.split(".")[0] not in SKIP_EXTENSIONS:
                    out.append(os.path.join(dirpath, name))
    return sorted(out)


#: Libraries the engine dlopens by soname at run time (``engine/machine/decompress.py``: bzImage
#: payloads); no ``ldd`` closure names them, so they are looked up in the loader's usual dirs.
DLOPENED = ("liblz4.so.1", "libzstd.so.1")
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib",
            "/usr/lib")  # fmt: skip
LOADERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
           "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")  # fmt: skip


def _trace(files: list[str]) -> str:
    """The loader's dependency listing of ``files``: ``ldd`` (one run), or where ``ldd`` cannot
    run (it is a bash script; the rig's L1 has no bash) the loader itself, ``ld.so --list``,
    once per file (what ``ldd`` does inside)."""
    try:
        return subprocess.run(["ldd", *files], capture_output=True, text=True, check=False).stdout
    except OSError:
        pass
    loader = next((p for p in LOADERS if os.path.exists(p)), None)
    if loader is None:
        return ""
    out = []
    for f in files:
        res = subprocess.run([loader, "--list", f], capture_output=True, text=True, check=False)
        out.append(res.stdout)
    return "\n".join(out)


def _ldd(files: list[str]) -> list[str]:
    """Resolved shared-library paths of ``files``."""
    libs: set[str] = set()
    for line in _trace(files).splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (")[0].strip()
            if target.startswith("/"):
                libs.add(target)
        elif line.startswith("/") and "(0x" in line:
            libs.add(line.split(" (")[0].strip())  # the loader itself
    return sorted(libs)


def _dlopened() -> list[str]:
    """The real paths of ``DLOPENED`` that the host has (an absent one: the engine says so)."""
    out = []
    for name in DLOPENED:
        for d in LIB_DIRS:
            p = os.path.join(d, name)
            if os.path.exists(p):
                out += [p, os.path.realpath(p)]  # the soname link and the file it names
                break
    return out


def _site_packages() -> list[str]:
    """The site dirs the engine imports from: the venv's, or (no venv, e.g. the rig's L1 with
    Debian's python3 and dependencies in dist-packages) the system ones on ``sys.path``."""
    dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
    if sys.prefix != sys.base_prefix:
        return [p for p in dirs if p.startswith(sys.prefix)]
    return [p for p in dirs if p in sys.path]


def _cache_key(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in [*files, "/etc/ld.so.cache"]:
        try:
            st = os.stat(f)
            h.update(f"{f}:{st.st_mtime_ns}:{st.st_size}\n".encode())
        except OSError:
            h.update(f"{f}:-\n".encode())
    return h.hexdigest()[:16]


def discover(cache_dir: str | None = None) -> Runtime:
    """The current interpreter's runtime closure (what ``python -m engine`` needs to start)."""
    stdlib = sysconfig.get_path("stdlib")
    dynload = os.path.join(stdlib, "lib-dynload")
    site_pkgs = _site_packages()
    interp = os.path.realpath(sys.executable)
    exts = _ext_modules([dynload, *site_pkgs])
    key = _cache_key([interp, *exts])
    cache = os.path.join(cache_dir, f"runtime-{key}.json") if cache_dir else None
    libs: list[str] | None = None
    if cache and os.path.exists(cache):
        try:
            with open(cache) as f:
                libs = json.load(f)
        except (OSError, ValueError):
            libs = None
    if libs is None:
        libs = _ldd([interp, *exts])
        if cache and cache_dir:  # cache is set exactly when cache_dir is
            from engine.ozone.state import private_dirs

            private_dirs(cache_dir)
            tmp = f"{cache}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(libs, f)
            os.replace(tmp, cache)
    paths = [sys.executable, interp, stdlib, *libs, *_dlopened()]
    if os.path.exists("/etc/ld.so.cache"):
        paths.append("/etc/ld.so.cache")
    if sys.prefix != sys.base_prefix:
        paths.append(os.path.join(sys.prefix, "pyvenv.cfg"))
    paths.extend(site_pkgs)
    pythonpath: list[str] = []
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            paths.extend(spec.submodule_search_locations)
            pythonpath.extend(os.path.dirname(p) for p in spec.submodule_search_locations)
    return Runtime(sys.executable, tuple(dict.fromkeys(paths)), tuple(dict.fromkeys(pythonpath)))

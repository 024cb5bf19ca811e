"""The guest's tools disk: Debian's fio and iperf3 with every library they load, as an ext4 image.

Why a disk of its own and not the initrd: Debian's fio links librbd, librados, libgfapi, libnbd,
libpmem and RDMA libraries directly (its engines are built in), about 80 MB of libraries. The
initrd is loaded into guest RAM and carried into the rig's L1 on every boot; a read-only disk is
read only where a tool touches it. A benchmark attaches ``build/guest/tools.ext4`` as one more
drive and the guest's init mounts it (``svreport.tools=<dev>``, docs/testing.md).

Layout (a tree like Debian's, so RUNPATHs resolve): the packages' binaries at their paths
(``/usr/bin/fio``), the loader at its PT_INTERP path, the libraries where their packages put
them, and one wrapper per tool in ``/bin`` that runs it through the image's own loader with the
image's library folders, so the guest runs ``/tools/bin/fio`` without a chroot:

    /tools/bin/fio --name=x --filename=/dev/vda ...

Which packages: the tools' own, then their dependencies level by level (apt-cache
depends) until every DT_NEEDED of every file taken has been found; a library no package holds is
a build error naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rig_debs import BUILD, BuildError, candidates, log, run, unpack

#: tool -> (its binary in its package, the package)
TOOLS = {"fio": ("usr/bin/fio", "fio"), "iperf3": ("usr/bin/iperf3", "iperf3")}
FORMAT = "tools-v1"  # bump when the image's layout changes
LIB_GLOB = "x86_64-linux-gnu"
MAX_LEVELS = 6
WRAPPER = """#!/bin/sh
# {tool} from Debian ({package} {version}), through this disk's own loader and libraries.
d=${{0%/bin/*}}
exec "$d/{interp}" --library-path "{path}" "$d/{binary}" "$@"
"""


def _readelf(flag: str, path: Path) -> str:
    res = run(["readelf", flag, "-W", str(path)])
    if res.returncode != 0:
        raise BuildError(
            f"readelf {flag} {path}: {res.stderr.strip()}\nhint: run scripts/host-deps"
        )
    return res.stdout


def needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF file."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _readelf("-d", path))


def interpreter(path: Path) -> str:
    m = re.search(r"program interpreter: /(\S+)\]", _readelf("-l", path))
    if m is None:
        raise BuildError(f"{path}: no ELF program interpreter")
    return m.group(1)


def _follow(pkg_root: Path, path: Path) -> Path:
    """The file a link in an unpacked package names, read inside that package (an absolute link
    such as lib64/ld-linux-x86-64.so.2 -> /lib/... means the package's own /lib)."""
    for _ in range(16):
        if not path.is_symlink():
            if not path.is_file():
                raise BuildError(f"{path} is not a file")
            return path
        link = os.readlink(path)
        path = pkg_root / link.lstrip("/") if link.startswith("/") else path.parent / link
    raise BuildError(f"{path}: too many levels of links")


def lib_depends(pkgs: list[str]) -> list[str]:
    """The packages ``pkgs`` depend on (virtual ones, in <>, left out)."""
    res = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", *pkgs])
    found = re.findall(r"^\s+(?:Pre)?Depends: ([^\s<>:]+)$", res.stdout, re.M)
    return sorted(set(found))


class Closure:
    """Files to copy (path in the image -> source), found over a growing set of packages."""

    def __init__(self) -> None:
        self.libs: dict[str, Path] = {}  # soname or file name -> file in an unpacked package
        self.roots: dict[str, Path] = {}  # package -> its unpacked root
        self.files: dict[str, Path] = {}  # path in the image -> source file

    def add_packages(self, pkgs: list[str]) -> None:
        new = [p for p in pkgs if p not in self.roots]
        for pkg, root in zip(new, unpack(new), strict=True):
            self.roots[pkg] = root
            for f in sorted(root.rglob("*")):
                if LIB_GLOB in f.parts and (f.is_file() or f.is_symlink()):
                    self.libs.setdefault(f.name, f)

    def place(self, pkg_root: Path, src: Path) -> str:
        """Take ``src`` at its path in its package, copied from the file it names."""
        rel = str(src.relative_to(pkg_root))
        self.files[rel] = _follow(pkg_root, src)
        return rel

    def root_of(self, path: Path) -> Path:
        return next(r for r in self.roots.values() if path.is_relative_to(r))


def collect() -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """(image path -> source, wrapper path -> text, package=version list)."""
    c = Closure()
    tool_pkgs = sorted({pkg for _, pkg in TOOLS.values()})
    c.add_packages(tool_pkgs)
    level = tool_pkgs
    todo: list[Path] = []
    interps: dict[str, str] = {}
    for tool, (binary, pkg) in TOOLS.items():
        exe = c.roots[pkg] / binary
        if not exe.is_file():
            raise BuildError(f"package {pkg} has no /{binary}")
        c.files[binary] = exe
        interps[tool] = interpreter(exe)
        todo.append(exe)
    missing: set[str] = set()
    seen: set[str] = set()
    for _ in range(MAX_LEVELS):
        while todo:
            for soname in needed(todo.pop()):
                if soname in seen:
                    continue
                lib = c.libs.get(soname)
                if lib is None:
                    missing.add(soname)
                    continue
                seen.add(soname)
                missing.discard(soname)
                c.place(c.root_of(lib), lib)
                todo.append(c.files[str(lib.relative_to(c.root_of(lib)))])
        if not missing and all(Path(i).name in c.libs for i in interps.values()):
            break
        level = [p for p in lib_depends(level) if p not in c.roots]
        if not level:
            break
        c.add_packages(level)
        todo = [c.files[p] for p in list(c.files)]  # look again with the new packages
        seen.clear()
    if missing:
        raise BuildError(
            "the guest tools need libraries no Debian dependency holds: "
            + " ".join(sorted(missing))
        )
    wrappers: dict[str, str] = {}
    versions = []
    debs = {d.name: d for d in candidates(sorted(c.roots))}
    for tool, (binary, pkg) in TOOLS.items():
        interp = interps[tool]
        lib = c.libs.get(Path(interp).name)
        if lib is None:
            raise BuildError(f"/{binary}: its loader /{interp} is in no package taken")
        c.files[interp] = lib.resolve()
        folders = sorted({str(Path(f).parent) for f in c.files if LIB_GLOB in f})
        wrappers[f"bin/{tool}"] = WRAPPER.format(
            tool=tool,
            package=pkg,
            version=debs[pkg].version,
            interp=interp,
            path=":".join(f"$d/{f}" for f in folders),
            binary=binary,
        )
    versions = [f"{d.name}={d.version}" for d in sorted(debs.values(), key=lambda d: d.name)]
    return c.files, wrappers, versions


def make_image(files: dict[str, Path], wrappers: dict[str, str], out: Path) -> None:
    """An ext4 image of just these files, sized to them (read-only in use: no spare room)."""
    with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        root = Path(tmp)
        total = 0
        for rel, src in sorted(files.items()):
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o755)
            total += dst.stat().st_size
        for rel, text in wrappers.items():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
            os.chmod(dst, 0o755)
        mib = (total * 5 // 4) // 2**20 + 16  # ext4 metadata and journal
        tmp_img = out.with_name(out.name + ".tmp")
        tmp_img.unlink(missing_ok=True)
        cmd = ["mke2fs", "-q", "-t", "ext4", "-L", "svtools", "-d", str(root), "-F", str(tmp_img)]
        res = subprocess.run([*cmd, f"{mib}M"], capture_output=True, text=True)
        if res.returncode != 0:
            raise BuildError(f"mke2fs failed: {res.stderr.strip()}\nhint: run scripts/host-deps")
        os.replace(tmp_img, out)


def build_tools(out_dir: Path, lists_mtime: float) -> None:
    """build/guest/tools.ext4, rebuilt when this file, the package lists or the versions change."""
    out = out_dir / "tools.ext4"
    stamp = out_dir / ".tools-stamp"
    me = Path(__file__).resolve()
    if (
        stamp.exists()
        and out.exists()
        and stamp.stat().st_mtime > max(lists_mtime, me.stat().st_mtime)
    ):
        return
    files, wrappers, versions = collect()
    digest = hashlib.sha256(me.read_bytes()).hexdigest()
    stamp_text = "\n".join([FORMAT, digest, *versions, *sorted(files)])
    if stamp.exists() and out.exists() and stamp.read_text() == stamp_text:
        stamp.touch()
        return
    make_image(files, wrappers, out)
    stamp.write_text(stamp_text)
    log(f"built {out.name}: {', '.join(TOOLS)} and {len(files) - len(TOOLS)} libraries")

"""Fetch and unpack Debian packages into a cache under build/, for the guest image and the rig.

Why apt-get download + dpkg -x: the guest and L1 images are made of the exact binaries Debian
ships (no compiler, no root file system tricks), and the cache makes a second build instant.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
DEBS = BUILD / "debs"


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"{Path(sys.argv[0]).name}: {msg}", file=sys.stderr, flush=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize builders sharing a cache (several engineers run tests at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Deb:
    """A package at its candidate version, named as apt-get download names its file."""

    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _show(pkgs: list[str]) -> subprocess.CompletedProcess[str]:
    return run(["apt-cache", "show", "--no-all-versions", *pkgs])


def candidates(pkgs: list[str]) -> list[Deb]:
    """Candidate versions of `pkgs`; runs `apt-get update` once if the package lists lack them."""
    res = _show(pkgs)
    if res.returncode != 0 or not res.stdout.strip():
        log("package lists lack " + " ".join(pkgs) + "; running apt-get update")
        upd = run(["apt-get", "update", "-qq"])
        if upd.returncode != 0:
            raise BuildError(f"apt-get update failed: {upd.stderr.strip()}\nhint: run as root")
        res = _show(pkgs)
        if res.returncode != 0:
            raise BuildError(f"apt-cache show {' '.join(pkgs)}: {res.stderr.strip()}")
    found: dict[str, Deb] = {}
    for para in res.stdout.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            name = fields["Package"]
            found.setdefault(name, Deb(name, fields["Version"], fields["Architecture"]))
    missing = [p for p in pkgs if p not in found]
    if missing:
        raise BuildError(f"Debian packages not found: {' '.join(missing)}")
    return [found[p] for p in pkgs]


def depends_on(pkg: str, prefix: str) -> str:
    """The dependency of meta-package `pkg` whose name starts with `prefix` (the real kernel)."""
    res = run(["apt-cache", "depends", pkg])
    if res.returncode != 0:
        candidates([pkg])  # refreshes the lists if needed
        res = run(["apt-cache", "depends", pkg])
    for line in res.stdout.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith(prefix):
            return dep
    raise BuildError(f"{pkg} has no dependency named {prefix}*: {res.stdout or res.stderr}")


def fetch(debs: list[Deb]) -> list[Path]:
    """Download the .deb files not yet in the cache; return their paths."""
    DEBS.mkdir(parents=True, exist_ok=True)
    todo = [d for d in debs if not (DEBS / d.filename).exists()]
    if todo:
        log("downloading " + " ".join(d.name for d in todo))
        specs = [f"{d.name}={d.version}" for d in todo]
        res = run(["apt-get", "download", "-q", *specs], cwd=DEBS)
        if res.returncode != 0:
            raise BuildError(f"apt-get download failed: {res.stderr.strip()}")
    for d in debs:
        if not (DEBS / d.filename).exists():
            raise BuildError(f"apt-get download did not produce {DEBS / d.filename}")
    return [DEBS / d.filename for d in debs]


def extract(deb: Path) -> Path:
    """Unpack one .deb (once) into build/debs/x/<name>/ and return that root."""
    dest = DEBS / "x" / deb.stem
    if (dest / ".done").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    run(["rm", "-rf", str(tmp)])
    tmp.mkdir(parents=True)
    res = run(["dpkg", "-x", str(deb), str(tmp)])
    if res.returncode != 0:
        raise BuildError(f"dpkg -x {deb} failed: {res.stderr.strip()}")
    (tmp / ".done").touch()
    run(["rm", "-rf", str(dest)])
    os.rename(tmp, dest)
    return dest


def unpack(pkgs: list[str]) -> list[Path]:
    """Candidate versions of `pkgs`, downloaded and unpacked; returns their roots in order."""
    return [extract(p) for p in fetch(candidates(pkgs))]

"""What ``svlaunch cmdline`` and ``svlaunch validate`` import (not how long it takes).

Start-up time is measured by ``bench/cmdline_startup.py`` and ``bench/validate_many.py``; this
test pins the cause of most of it: heavy packages that a run does not need. Each case runs the
real CLI in a fresh interpreter under ``-X importtime`` and reads every module it loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine import CONTRACT_MODULES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# never on these paths: each costs 10-140 ms, or drags in the engine (beyond its contract)
ALWAYS = {
    "jsonschema",
    "rich",
    "cffi",
    "pyroute2",
    "engine",
    "importlib.metadata",
    "launcher.validate.host",
    "launcher.tui",
    "launcher.runtime",
}
NOT_FOR = {"toml": {"yaml", "_yaml"}, "yaml": {"tomllib"}}


def imported(*argv: str) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "launcher.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return proc.returncode, names, proc.stderr


def offending(names: set[str], banned: set[str]) -> list[str]:
    return sorted(
        n
        for n in names - set(CONTRACT_MODULES)
        if any(n == b or n.startswith(b + ".") for b in banned)
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("cmdline", "examples/quickstart.toml"),
        ("cmdline", "examples/numa-q35.toml"),
        ("cmdline", "--shell", "examples/net-microvm.yaml"),
        ("validate", "examples/quickstart.toml"),
        ("validate", "--quiet", "examples/aarch64-virt.yaml"),
    ],
    ids=" ".join,
)
def test_no_heavy_imports(argv: tuple[str, ...]) -> None:
    rc, names, err = imported(*argv)
    assert rc == 0, err[-2000:]
    fmt = "yaml" if argv[-1].endswith(".yaml") else "toml"
    assert offending(names, ALWAYS | NOT_FOR[fmt]) == []
    assert "launcher.model" in names and "launcher.manifest.shape" in names  # it did the work


def test_invalid_manifest_is_worded_without_jsonschema(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "vm.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write('name = "vm"\nqmp = "/run/vm.qmp"\n[machine]\ntyep = "q35"\n[cpu]\ncpus = -2\n')
    rc, names, err = imported("cmdline", path)
    assert rc == 1
    assert f"{path}:4:1: error[unknown-key]" in err and "did you mean 'type'?" in err
    assert f"{path}:6:8: error[range]" in err
    assert offending(names, ALWAYS | NOT_FOR["toml"]) == []


def test_the_check_can_fail() -> None:
    """The detector sees a heavy import when one happens."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import jsonschema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if "|" in ln}
    found = offending(names, ALWAYS)
    assert found[0] == "jsonschema" and all(n.startswith("jsonschema") for n in found)

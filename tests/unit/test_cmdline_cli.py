"""``svlaunch cmdline`` and ``svlaunch import`` as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "virtio-net-mmio.toml"


def svlaunch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cmdline_styles_agree() -> None:
    lines = svlaunch("cmdline", str(MANIFEST))
    shell = svlaunch("cmdline", "--shell", str(MANIFEST))
    as_json = svlaunch("cmdline", "--json", str(MANIFEST))
    assert lines.returncode == shell.returncode == as_json.returncode == 0
    argv = lines.stdout.splitlines()
    assert argv[0] == "stratovirt" and "-netdev" in argv
    assert shlex.split(shell.stdout) == argv == json.loads(as_json.stdout)
    bare = svlaunch("cmdline", "--no-program", str(MANIFEST)).stdout.splitlines()
    assert bare == argv[1:]


def test_cmdline_ozone_wraps_with_jail_paths() -> None:
    out = svlaunch("cmdline", "--ozone", str(ROOT / "manifests" / "ozone.toml"))
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    sep = argv.index("--")
    assert argv[0] == "ozone" and "-exec-file" in argv[:sep]
    assert "./vmlinux.bin" in argv[sep:] and "unix:./stratovirt.socket,server,nowait" in argv[sep:]


def test_cmdline_without_ozone_section_is_an_error(tmp_path: Path) -> None:
    out = svlaunch("cmdline", "--ozone", str(MANIFEST))
    assert (
        out.returncode == 1 and "no [ozone] section" in out.stderr and "Traceback" not in out.stderr
    )


def test_import_writes_a_manifest_that_prints_the_same_argv(tmp_path: Path) -> None:
    argv = svlaunch("cmdline", str(MANIFEST)).stdout.splitlines()
    for fmt in ("toml", "yaml"):
        target = tmp_path / f"vm.{fmt}"
        out = svlaunch("import", "-o", str(target), "--", *argv)
        assert out.returncode == 0, out.stderr
        again = svlaunch("cmdline", str(target))
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == argv


def test_import_relative_paths_and_stdout(tmp_path: Path) -> None:
    out = svlaunch(
        "import", "--format", "yaml", "--", "-kernel", "vmlinux", "-initrd", "initrd.img",
        "-qmp", "unix:/run/x.qmp,server,nowait", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"kernel: {tmp_path}/vmlinux" in out.stdout


def test_import_errors_are_located_without_traceback() -> None:
    out = svlaunch("import", "--", "-m", "1G", "-drive", "id=d,file=/x,readonly=1")
    assert out.returncode == 1
    assert "argv:4:" in out.stderr and "invalid value for 'readonly'" in out.stderr
    assert "Traceback" not in out.stderr


def test_import_ozone_cli() -> None:
    out = svlaunch(
        "import", "--ozone", "--", "ozone", "-name", "vm", "-exec-file", "/usr/bin/stratovirt",
        "-uid", "1", "-gid", "1", "-source", "/img/vmlinux", "--", "-kernel", "./vmlinux",
        "-initrd", "/vmlinux", "-qmp", "unix:./vm.qmp,server,nowait",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert 'kernel = "/img/vmlinux"' in out.stdout and "[ozone]" in out.stdout
    assert "/srv/ozone/stratovirt/vm/vm.qmp" in out.stdout


def test_import_needs_arguments() -> None:
    out = svlaunch("import")
    assert out.returncode == 2 and "nothing to import" in out.stderr


def test_output_to_an_unwritable_place_is_one_clear_error(tmp_path: Path) -> None:
    for cmd in (["schema"], ["plan", str(MANIFEST)]):
        out = svlaunch(*cmd, "-o", str(tmp_path / "no-such-dir" / "out.json"))
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "cannot write" in out.stderr and "no-such-dir" in out.stderr

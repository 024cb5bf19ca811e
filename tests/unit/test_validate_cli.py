"""`svlaunch validate` as a command: folders, JSON, run-wide name check, start-up imports."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from launcher.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = 'name = "{name}"\nqmp = "/run/{name}.qmp"\n[boot]\nkernel = "k"\ninitrd = "i"\n'


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_folder_recursion_and_summary(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a" / "one.toml").write_text(GOOD.format(name="one"))
    (tmp_path / "two.yaml").write_text(
        "name: two\nqmp: /run/two.qmp\nboot: {kernel: k, initrd: i}\n"
    )
    (tmp_path / ".hidden" / "bad.toml").write_text("not toml")
    (tmp_path / "notes.txt").write_text("ignored")
    rc, out, err = run("validate", str(tmp_path))
    assert rc == 0, err
    assert "2 manifest(s) checked: 2 valid, 0 invalid" in out


def test_duplicate_names_across_files(tmp_path) -> None:
    (tmp_path / "a.toml").write_text(GOOD.format(name="same"))
    (tmp_path / "b.toml").write_text("# second\n" + GOOD.format(name="same"))
    rc, _, err = run("validate", str(tmp_path))
    assert rc == 1
    assert f"{tmp_path / 'b.toml'}:2:1: error[vm-name-duplicate]" in err
    assert "a.toml" in err


def test_json_output(tmp_path) -> None:
    (tmp_path / "a.toml").write_text(GOOD.format(name="a").replace('"k"', '"k"\ncmdline = 5'))
    rc, out, _ = run("validate", "--format", "json", str(tmp_path / "a.toml"))
    report = json.loads(out)
    assert rc == 1 and report["valid"] is False
    (issue,) = report["files"][0]["issues"]
    assert issue["code"] == "wrong-type" and issue["path"] == "boot.cmdline"
    assert (issue["line"], issue["col"]) == (5, 11)


def test_strict_and_quiet(tmp_path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(GOOD.format(name="a").replace('qmp = "/run/a.qmp"\n', ""))
    assert run("validate", str(path))[0] == 0  # qmp-missing is a warning for the engine
    assert run("validate", "--strict", str(path))[0] == 1
    assert run("validate", "--target", "stratovirt", str(path))[0] == 1
    rc, out, err = run("validate", "--quiet", str(path))
    assert rc == 0 and out == "" and err == ""


def test_nothing_to_validate(tmp_path) -> None:
    rc, _, err = run("validate", str(tmp_path))
    assert rc == 1 and "no manifests" in err


def test_help_shows_examples() -> None:
    for cmd in ("validate", "check", "schema"):
        proc = subprocess.run(
            [sys.executable, "-m", "launcher.cli", cmd, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0
        assert "examples:" in proc.stdout and f"svlaunch {cmd}" in proc.stdout


def test_validate_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from launcher.cli import main; from engine import CONTRACT_MODULES; "
        "rc = main(['validate', '--quiet', 'examples/quickstart.toml']); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('engine', 'cffi', 'rich', 'pyroute2', 'yaml') and m not in CONTRACT_MODULES]; "
        "print(rc, bad)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr

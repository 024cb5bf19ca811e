"""An engine that crashes says so: exit code 3, the traceback on stderr, and, for test suites,
a crash file in ``$SVLAUNCH_CRASH_DIR`` (the suite fails any test that leaves one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.__main__ import guarded
from engine.errors import EXIT_INTERNAL


@pytest.mark.traceback_ok
def test_a_crash_is_exit_3_with_a_crash_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SVLAUNCH_CRASH_DIR", str(tmp_path))

    def boom() -> int:
        raise ZeroDivisionError("a bug")

    assert guarded(boom) == EXIT_INTERNAL
    assert "internal error (a bug)" in capsys.readouterr().err
    (crash,) = os.listdir(tmp_path)
    assert crash.startswith("engine-crash-")
    assert "ZeroDivisionError: a bug" in (tmp_path / crash).read_text()


def test_a_clean_run_leaves_no_crash_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SVLAUNCH_CRASH_DIR", str(tmp_path))
    assert guarded(lambda: 0) == 0
    assert os.listdir(tmp_path) == []


@pytest.mark.traceback_ok
@pytest.mark.parametrize("module", ["engine.ozone", "engine.pool"])
def test_the_supervisor_and_the_pool_crash_as_the_engine_does(module: str, tmp_path: Path) -> None:
    """A bug in ``python -m engine.ozone``/``engine.pool`` is exit 3 with a crash file too (exit 1
    would read as a host error in the VM's exit record)."""
    import subprocess
    import sys

    # The module's own __main__ block runs, with a main that has a bug.
    script = (
        "import runpy, sys, engine.__main__ as em\n"
        "real = em.crash_guard\n"
        "def boom(): raise ZeroDivisionError('a bug')\n"
        "em.crash_guard = lambda body, who: real(boom, who)\n"
        f"runpy.run_module({module + '.__main__'!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "SVLAUNCH_CRASH_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == EXIT_INTERNAL, res.stderr
    who = "svlaunch-ozone" if module == "engine.ozone" else "svlaunch-pool"
    assert f"{who}: internal error (a bug)" in res.stderr
    (crash,) = os.listdir(tmp_path)
    assert crash.startswith(f"{who}-crash-")

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

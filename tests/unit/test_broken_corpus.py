"""Every manifest in tests/broken/ is rejected with its expected, located error.

Each file's first line says ``# expect: <code> <line>:<col> <key path>``; ``-`` means no key
path (syntax errors). A sample runs ``svlaunch validate`` as a subprocess to check the exit code
and that no traceback is printed; the rest run in-process through the same function.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from launcher.cli import main
from launcher.commands.validate import validate_files

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
BROKEN = os.path.join(HERE, "broken")
ROOT = os.path.dirname(HERE)
FILES = sorted(f for f in os.listdir(BROKEN) if f.endswith((".toml", ".yaml", ".yml")))
EXPECT = re.compile(r"# expect: (\S+) (\d+):(\d+) (\S*)")


def expectation(path: str) -> tuple[str, int, int, str, str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = EXPECT.match(text)
    assert m, f"{path}: first line must be '# expect: CODE LINE:COL PATH'"
    target = "stratovirt" if "# target: stratovirt" in text else "engine"
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4), target


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 150


@pytest.mark.parametrize("name", FILES)
def test_broken_manifest_is_located(name: str) -> None:
    path = os.path.join(BROKEN, name)
    code, line, col, key, target = expectation(path)
    ((_, issues),) = validate_files([path], target)
    errors = [i for i in issues if i.is_error]
    assert errors, f"{name}: expected {code}, got no error"
    assert all(i.mark is not None and i.mark.line > 0 for i in errors), errors
    found = [
        i
        for i in errors
        if i.code == code
        and i.mark is not None
        and (i.mark.line, i.mark.col) == (line, col)
        and (key == "-" or i.path == key)
    ]
    assert found, f"{name}: want {code} at {line}:{col} {key}, got " + "; ".join(
        f"{i.code} {i.mark} {i.path}" for i in errors
    )
    assert all(i.message for i in errors)


@pytest.mark.parametrize("name", FILES[::4])
def test_cli_exit_code_and_snippet(name: str) -> None:
    path = os.path.join(BROKEN, name)
    code, line, col, _, target = expectation(path)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["validate", "--target", target, path])
    text = err.getvalue()
    assert rc == 1
    assert "Traceback" not in text
    assert f"{path}:{line}:{col}: error[{code}]" in text
    assert "^" in text  # the caret under the column


@pytest.mark.parametrize("name", FILES[::20])
def test_subprocess_no_traceback(name: str) -> None:
    path = os.path.join(BROKEN, name)
    code, line, col, _, target = expectation(path)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "validate", "--target", target, path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f":{line}:{col}: error[{code}]" in proc.stderr

"""Shared pytest configuration: the test tiers and the markers that skip what a host cannot run.

The folders are the tiers (docs/testing.md): ``unit/`` runs anywhere, ``kvm/`` needs /dev/kvm,
``root/`` needs root (taps, namespaces, cgroups) and /dev/kvm, ``rig/`` boots real Linux in the
nested rig. Every test in a folder gets that folder's marker, so ``-m "not rig"`` and friends
select tiers. Shared helpers live in ``support/`` (tiny guests, a virtio driver, the rig runner).

No traceback for any input, anywhere in the suite: every ``svlaunch`` the suite runs (in-process,
as a subprocess, in tmux) records an internal error in ``$SVLAUNCH_CRASH_DIR`` (set here for the
whole session), and output that pytest captures is searched too. A test phase that leaves either
fails, unless the test is marked ``traceback_ok`` (it provokes one on purpose).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))

#: folder -> the markers its tests get
TIERS = {"kvm": ("kvm",), "root": ("root", "kvm"), "rig": ("rig",)}

LONG = os.environ.get("SVLAUNCH_LONG") == "1"
TRACEBACK = "Traceback (most recent call last)"
CRASH_DIR = "SVLAUNCH_CRASH_DIR"  # engine.errors.record_crash writes a file per crash
_seen: set[str] = set()  # crash records already reported
_OWN_CRASH_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "traceback_ok: the test provokes a traceback on purpose (exempt from the check)"
    )
    if not os.environ.get(CRASH_DIR):
        os.environ[CRASH_DIR] = tempfile.mkdtemp(prefix="svlaunch-crashes-")
        config.stash[_OWN_CRASH_DIR] = os.environ[CRASH_DIR]
    _seen.update(_crashes())  # records from before this session are not this session's


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_OWN_CRASH_DIR, None)
    if folder:  # the session's own folder; every record in it was reported with its test
        shutil.rmtree(folder, ignore_errors=True)


def _crashes() -> set[str]:
    try:
        return set(os.listdir(os.environ[CRASH_DIR]))
    except OSError:
        return set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Fail the phase (setup, call, teardown) that left a crash record or printed a traceback."""
    report = yield
    new = _crashes() - _seen
    _seen.update(new)
    if "traceback_ok" in item.keywords or report.failed:
        return report
    found = []
    for name in sorted(new):
        with open(os.path.join(os.environ[CRASH_DIR], name), encoding="utf-8") as f:
            found.append(f"svlaunch crashed ({name}):\n{f.read()}")
    for title, text in report.sections:  # this phase's output (later phases repeat earlier ones)
        if title.endswith(f" {report.when}") and TRACEBACK in text:
            found.append(f"a traceback in the {title.lower()}:\n{text}")
    if found:
        report.outcome = "failed"
        report.longrepr = "no traceback for any input (tests/conftest.py):\n" + "\n".join(found)
    return report


# `svlaunch up` starts an engine pool on first use (docs/pool.md), which would outlive the test
# that caused it: tests exercise the exec path unless they ask for a pool (tests/kvm/test_pool.py
# sets SVLAUNCH_POOL=on and stops the pools it starts).
os.environ.setdefault("SVLAUNCH_POOL", "off")


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_kvm = pytest.mark.skip(reason="/dev/kvm is missing or not usable on this host")
    not_root = pytest.mark.skip(reason="needs root")
    have_kvm = kvm_usable()
    if not LONG:
        # The full-length fuzzers run with SVLAUNCH_LONG=1; the suite runs their bounded slices.
        # Deselected rather than skipped, so that a skip in CI always means a missing host part.
        long_items = [item for item in items if "long" in item.keywords]
        if long_items:
            config.hook.pytest_deselected(items=long_items)
            items[:] = [item for item in items if "long" not in item.keywords]
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        for marker in TIERS.get(tier, ()):
            item.add_marker(getattr(pytest.mark, marker))
        if "kvm" in item.keywords and not have_kvm:
            item.add_marker(no_kvm)
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(not_root)


@pytest.fixture
def tmux(tmp_path: Path):
    """A tmux server of the test's own, one pane (``support/tmux.py``)."""
    from tmux import Tmux

    t = Tmux("svl-tui", tmp_path / "tmux.sock")
    yield t
    t.kill()

"""Shared pytest configuration: the test tiers and the markers that skip what a host cannot run.

The folders are the tiers (docs/testing.md): ``unit/`` runs anywhere, ``kvm/`` needs /dev/kvm,
``root/`` needs root (taps, namespaces, cgroups) and /dev/kvm, ``rig/`` boots real Linux in the
nested rig. Every test in a folder gets that folder's marker, so ``-m "not rig"`` and friends
select tiers. Shared helpers live in ``support/`` (tiny guests, a virtio driver, the rig runner).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))

#: folder -> the markers its tests get
TIERS = {"kvm": ("kvm",), "root": ("root", "kvm"), "rig": ("rig",)}

LONG = os.environ.get("SVLAUNCH_LONG") == "1"

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
    short = pytest.mark.skip(reason="long mode only: set SVLAUNCH_LONG=1")
    have_kvm = kvm_usable()
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        for marker in TIERS.get(tier, ()):
            item.add_marker(getattr(pytest.mark, marker))
        if "kvm" in item.keywords and not have_kvm:
            item.add_marker(no_kvm)
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(not_root)
        if "long" in item.keywords and not LONG:
            item.add_marker(short)


@pytest.fixture
def tmux(tmp_path: Path):
    """A tmux server of the test's own, one pane (``support/tmux.py``)."""
    from tmux import Tmux

    t = Tmux("svl-tui", tmp_path / "tmux.sock")
    yield t
    t.kill()

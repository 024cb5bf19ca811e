"""Shared pytest configuration: markers that skip what this host cannot run, with the reason."""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("SVLAUNCH_LONG") == "1"


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
        if "kvm" in item.keywords and not have_kvm:
            item.add_marker(no_kvm)
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(not_root)
        if "long" in item.keywords and not LONG:
            item.add_marker(short)

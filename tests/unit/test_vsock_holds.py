"""Two running VMs never share a vsock guest CID: the CID is a runtime hold, so the second
``up`` is refused at its claim, before any engine starts (vhost-vsock itself would refuse it
only when the second guest starts its vsock device, long after "started")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tiny_guest import HANG, make_plan, write_guest

from engine.ownfiles import plan_made_paths, vsock_hold
from engine.plan import Plan, VsockPlan
from launcher import runtime
from launcher.errors import HostError


def _plan(tmp_path: Path, name: str, cid: int) -> Plan:
    plan = make_plan(write_guest(tmp_path, HANG))
    vsock = VsockPlan("vsock0", 0xD000_0000, 10, guest_cid=cid)
    return dataclasses.replace(plan, name=name, devices=(vsock,))


def test_a_second_vm_on_a_held_cid_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SVLAUNCH_RUNTIME_DIR", str(tmp_path / "rt"))
    holds = plan_made_paths(_plan(tmp_path, "a", 7))
    assert (vsock_hold(7), "vsock") in holds
    first = runtime.claim("a", holds)
    try:
        with pytest.raises(HostError, match="vsock guest CID 7 belongs to the running VM 'a'"):
            runtime.claim("b", plan_made_paths(_plan(tmp_path, "b", 7)))
        assert not (tmp_path / "rt" / "b").exists()  # a refused claim leaves nothing
        other = runtime.claim("c", plan_made_paths(_plan(tmp_path, "c", 8)))
        other.release()
    finally:
        first.release()
    # once 'a' is gone (its lock released), the CID is free again
    again = runtime.claim("b", plan_made_paths(_plan(tmp_path, "b", 7)))
    again.release()

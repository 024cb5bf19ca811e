"""Two running VMs never share a tap: Linux lets a second process attach to a multi-queue tap,
so the runtime holds each VM's taps by name (``engine.ownfiles.tap_hold``); ``up`` of a second
VM on it is refused before its engine starts, ``svlaunch check`` names the VM that holds it,
and a check of the running VM's own manifest reports neither its tap nor its live QMP socket
as a conflict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lifecycle import manifest, svl
from tiny_guest import HANG, say

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")


def _nic(ifname: str, mac: str) -> str:
    return f'[nets.n0]\nifname = "{ifname}"\nmac = "{mac}"\nqueues = 2\nmq = true\n'


def test_a_second_vm_on_a_running_vms_tap_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}
    tap = f"svhold{os.getpid() % 100000}"
    qmp = tmp_path / "a.qmp"
    a = manifest(
        tmp_path, "a", say(b"a\n") + HANG, top=f'qmp = "{qmp}"\n',
        extra=_nic(tap, "52:54:00:aa:01:01"),
    )  # fmt: skip
    b = manifest(tmp_path, "b", say(b"b\n") + HANG, extra=_nic(tap, "52:54:00:aa:01:02"))
    try:
        res = svl(env, "up", "-d", str(a))
        assert res.returncode == 0, res.stderr
        record = json.loads((tmp_path / "rt" / "a" / "record.json").read_text())
        assert {"path": f"/sys/class/net/{tap}", "role": "tap"} in record["holds"]

        # the running VM's own manifest: its socket and tap are its own, not conflicts
        res = svl(env, "check", str(a))
        assert res.returncode == 0, res.stderr
        assert "host-socket" not in res.stderr and "host-tap" not in res.stderr
        assert "warning[host-running]" in res.stderr and "VM 'a' is running" in res.stderr

        res = svl(env, "check", str(b))
        assert res.returncode == 1
        assert f"error[host-tap]: tap {tap} belongs to the running VM 'a'" in res.stderr
        assert "b.toml:" in res.stderr  # located at the manifest key

        res = svl(env, "up", "-d", str(b))
        assert res.returncode == 1 and "started" not in res.stdout
        assert f"tap {tap} belongs to the running VM 'a'" in res.stderr
        assert not (tmp_path / "rt" / "b").exists()  # refused before any engine started
        (row,) = json.loads(svl(env, "ps", "--json").stdout)
        assert row["name"] == "a" and row["state"] == "running"

        # once 'a' is gone its tap is free for 'b'
        assert svl(env, "down", "a", "--force").returncode == 0
        res = svl(env, "up", "-d", str(b))
        assert res.returncode == 0, res.stderr
    finally:
        for name in ("a", "b"):
            svl(env, "down", name, "--force")
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=tap):
                ipr.link("del", index=idx)

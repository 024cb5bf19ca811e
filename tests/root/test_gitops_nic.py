"""A NIC changed in git reaches the running VM without a restart: ``svlaunch apply`` hot-replaces
it in microvm's virtio-mmio net slot (``device_del``, ``netdev_del``, ``netdev_add``,
``device_add``) on real taps; the engine keeps running and serves the new tap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gitrepo import Repo
from lifecycle import manifest, svl
from tiny_guest import HANG, say

from launcher.qmpclient import QmpClient

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")


def taps() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_a_changed_nic_is_hot_replaced(tmp_path: Path) -> None:
    env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}
    tag = os.getpid() % 100000
    old, new = f"svgoa{tag}", f"svgob{tag}"
    img = tmp_path / "img"
    img.mkdir()
    repo = Repo(tmp_path / "git")

    def nic(ifname: str) -> str:
        extra = f'[nets.n0]\nifname = "{ifname}"\nmac = "52:54:00:aa:00:01"\n'
        return manifest(img, "nicvm", say(b"up\n") + HANG, extra=extra).read_text()

    repo.write("nicvm.toml", nic(old))
    repo.commit()
    try:
        res = svl(env, "apply", repo.source, "--host", "t1", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        (row,) = json.loads(svl(env, "ps", "--json").stdout)
        pid, qmp = row["pid"], row["qmp"]
        assert old in taps()  # the engine made the tap
        repo.write("nicvm.toml", nic(new))
        repo.commit("another tap")
        diff = json.loads(svl(env, "diff", repo.source, "--host", "t1", "--format", "json").stdout)
        (r,) = diff["rows"]
        assert r["action"] == "update-live"
        assert r["changes"] == [
            {"key": "nets.n0.ifname", "old": old, "new": new,
             "apply": "live: device_del, netdev_del, netdev_add, device_add"}
        ]  # fmt: skip
        res = svl(env, "apply", repo.source, "--host", "t1", "--yes")
        assert res.returncode == 0 and "nicvm: update-live: live:" in res.stdout, res.stdout
        (row,) = json.loads(svl(env, "ps", "--json").stdout)
        assert row["pid"] == pid  # no restart
        assert new in taps()
        holds = json.loads((tmp_path / "rt" / "nicvm" / "record.json").read_text())["holds"]
        held = {h["path"] for h in holds if h["role"] == "tap"}
        assert held == {f"/sys/class/net/{new}"}  # the new tap is held, the old one let go
        with QmpClient.connect(qmp, timeout=10) as c:
            devices = c.execute("x-svlaunch-query-stats")["devices"]
        assert any(d["id"] == "n0" and d["kind"] == "net" for d in devices), devices
        diff = json.loads(svl(env, "diff", repo.source, "--host", "t1", "--format", "json").stdout)
        assert [r["action"] for r in diff["rows"]] == ["unchanged"]
    finally:
        svl(env, "down", "nicvm", "--force")
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for name in (old, new):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)

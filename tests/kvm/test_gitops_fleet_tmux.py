"""The fleet view in a real terminal (tmux): ``svlaunch top`` with no name lists every VM of the
host with the revision it runs and whether it drifted; Enter opens the single-VM view and its
``q`` comes back. ``svlaunch ps`` shows the same columns."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from gitrepo import Repo
from lifecycle import ROOT, manifest, svl
from tiny_guest import HANG, say
from tmux import TMUX, Tmux

pytestmark = pytest.mark.skipif(not TMUX, reason="needs tmux (scripts/host-deps)")


def test_fleet_view_and_ps_columns(tmp_path: Path, tmux: Tmux) -> None:
    env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}
    img = tmp_path / "img"
    img.mkdir()
    repo = Repo(tmp_path / "git")
    for name in ("fleet-a", "fleet-b"):
        repo.write(f"{name}.toml", manifest(img, name, say(b"up\n") + HANG).read_text())
    rev = repo.commit()
    try:
        res = svl(env, "apply", repo.source, "--host", "t1", "--yes")
        assert res.returncode == 0, res.stderr
        hand = manifest(img, "fleet-hand", say(b"up\n") + HANG)
        assert svl(env, "up", "-d", str(hand)).returncode == 0
        assert svl(env, "qmp", "fleet-b", "stop").returncode == 0  # drifted: paused
        rows = {r["name"]: r for r in json.loads(svl(env, "ps", "--json").stdout)}
        assert rows["fleet-a"]["revision"] == rev[:12] and rows["fleet-a"]["drift"] == ""
        assert rows["fleet-b"]["drift"] == "paused, its manifest says it runs"
        assert rows["fleet-hand"]["revision"] is None and rows["fleet-hand"]["drift"] is None
        text = svl(env, "ps").stdout
        assert "REVISION" in text and "DRIFT" in text and rev[:12] in text

        argv = shlex.join([sys.executable, "-m", "launcher.cli", "top"])
        envs = f"SVLAUNCH_RUNTIME_DIR={shlex.quote(env['SVLAUNCH_RUNTIME_DIR'])}"
        tmux.start(f'cd {shlex.quote(str(ROOT))} && env {envs} {argv}; echo "fleet exited $?";'
                   " sleep 600", width=130, height=30)  # fmt: skip
        screen = tmux.wait_for("3 VM(s) on this host", "fleet-hand", "paused, its manifest",
                               timeout=30)  # fmt: skip
        line = next(x for x in screen.splitlines() if "fleet-a" in x)
        assert rev[:12] in line and "running" in line and line.rstrip().endswith("no")
        tmux.keys("Down")
        tmux.keys("Enter")
        tmux.wait_for("VM      fleet-b", "q  detach", timeout=30)
        tmux.keys("q")
        tmux.wait_for("fleet-b: back from its view; it keeps running", timeout=30)
        tmux.keys("q")
        screen = tmux.wait_for("fleet exited 0", timeout=30)
        assert "Traceback" not in screen
    finally:
        for name in ("fleet-a", "fleet-b", "fleet-hand"):
            svl(env, "down", name, "--force")

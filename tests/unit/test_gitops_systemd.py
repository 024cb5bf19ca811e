"""``svlaunch export systemd``: the units pass ``systemd-analyze verify`` (systemd's own
parser: no unknown key, no bad value, an executable ExecStart), user text is quoted so systemd
expands nothing in it, and the agent's unit never takes the VMs down with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.gitops.systemd import quote


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: scripts/host-deps installs systemd")
        pytest.skip("systemd-analyze is not installed (scripts/host-deps)")
    return found


def export(tmp_path: Path, capsys, *argv: str) -> dict[str, str]:
    out = tmp_path / "units"
    out.mkdir(exist_ok=True)
    assert main(["export", "systemd", *argv, "-o", str(out)]) == 0
    capsys.readouterr()
    return {p.name: p.read_text() for p in out.iterdir()}


def verify(tmp_path: Path) -> None:
    units = sorted(str(p) for p in (tmp_path / "units").iterdir())
    res = subprocess.run(
        [analyze(), "verify", *units], capture_output=True, text=True, check=False,
        cwd=tmp_path / "units",
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_units_verify(tmp_path: Path, capsys) -> None:
    units = export(tmp_path, capsys, "https://git.example.invalid/vms.git#main", "--host", "web-01",
                   "--prune", "--interval", "1m")  # fmt: skip
    assert set(units) == {"svlaunch-agent.service", "svlaunch@.service"}
    agent = units["svlaunch-agent.service"]
    assert "KillMode=process" in agent and "Restart=always" in agent
    assert (
        "agent https://git.example.invalid/vms.git#main --interval 1m --host web-01 --prune"
        in agent
    )
    for needed in ("DeviceAllow=/dev/kvm rw", "DeviceAllow=/dev/net/tun rw", "Delegate=yes"):
        assert needed in agent and needed in units["svlaunch@.service"]
    vm = units["svlaunch@.service"]
    assert "KillSignal=SIGINT" in vm and "/etc/svlaunch/vms/%i.toml" in vm
    verify(tmp_path)


def test_user_text_is_quoted(tmp_path: Path, capsys) -> None:
    units = export(tmp_path, capsys, "/srv/odd $HOME %n/vms.git#main", "--vm-dir", "/srv/my vms")
    agent = units["svlaunch-agent.service"]
    assert '"/srv/odd $$HOME %%n/vms.git#main"' in agent
    assert '"/srv/my vms/%i.toml"' in units["svlaunch@.service"]
    verify(tmp_path)
    assert quote("plain/path.toml") == "plain/path.toml"
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


def test_bad_arguments_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["export", "systemd", "/srv/vms.git", "--interval", "soon"]) == 2
    assert main(["export", "systemd", "relative/vms.git#main"]) == 1
    assert main(["export", "systemd", "/srv/vms.git", "--vm-dir", "vms"]) == 2
    capsys.readouterr()

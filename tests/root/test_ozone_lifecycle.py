"""Sandboxed VMs through the lifecycle commands (issue 13, finding 5): the corpus's ozone manifest
and ozone argv (imported), and the issue's ``-qmp unix:./qmp.sock`` form, go through ``check`` ->
``up -d`` -> ``ps`` -> ``down`` with real namespaces, cgroups and the engine on this host's KVM;
every sandbox rule a manifest can break is a located ``check`` error before anything starts.

The corpus files name a host that is not this one (``/var/lib/svlaunch``, a netns ``mynet``, CPUs
4-5, a 1 MB memory limit no Python engine fits in): those values are swapped for this host's
(a tiny guest, a netns of the test's own, CPU 0, 1 GiB) and nothing else is changed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
from lifecycle import ROOT, assert_answers, start_impostor, svl, wait_gone
from tiny_guest import HANG, pvpanic_event, say, write_guest

from launcher.identity import parent_pid

UID = 100  # the corpus's ozone uid
CG = "/sys/fs/cgroup"


@pytest.fixture
def host(tmp_path: Path):
    """The files the corpus names, at this host's paths, and a network namespace."""
    files = tmp_path / "files"
    files.mkdir()
    write_guest(files, say(b"hi from the jail\n") + HANG, "vmlinux.bin")
    (files / "rootfs").write_bytes(bytes(4096))
    os.chown(files / "rootfs", UID, UID)
    (files / "extra.bin").write_text("extra")
    for name in ("vmlinux.bin", "extra.bin"):
        os.chmod(files / name, 0o644)
    netns = f"svloz{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    yield {
        "/var/lib/svlaunch/": f"{files}/",
        "/var/run/netns/mynet": f"/run/netns/{netns}",
        "4-5": "0",
        "1000000": "1G",
    }
    subprocess.run(["ip", "netns", "delete", netns], check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


def _swap(text: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        text = text.replace(old, new)
    return text


def _argv(swaps: dict[str, str], name: str, qmp: str = "./stratovirt.socket") -> list[str]:
    argv = (ROOT / "manifests" / "ozone.ozone.argv").read_text().splitlines()[1:]
    argv = [_swap(a, swaps) for a in argv]
    argv[argv.index("-name") + 1] = name  # the sandbox's name (ozone -name)
    argv[len(argv) - 1 - argv[::-1].index("-name") + 1] = name  # the VM's (StratoVirt -name)
    argv[argv.index("-qmp") + 1] = f"unix:{qmp},server,nowait"
    return argv


def manifest_for(case: str, host: dict[str, str], tmp_path: Path, env) -> tuple[Path, str]:
    """The case's manifest on this host, and its VM (and sandbox) name."""
    name = f"oz{os.getpid() % 10000}{case[:3]}"
    out = tmp_path / f"{name}.toml"
    if case == "manifest":
        text = (ROOT / "manifests" / "ozone.toml").read_text()
        text = text.replace('name = "ozone"', f'name = "{name}"')
        out.write_text(_swap(text, {**host, "/stratovirt/ozone/": f"/stratovirt/{name}/"}))
        return out, name
    qmp = {"argv": "./stratovirt.socket", "issue": "./qmp.sock", "subdir": "./run/qmp.sock"}[case]
    res = svl(env, "import", "--ozone", "-o", str(out), "--", *_argv(host, name, qmp))
    assert res.returncode == 0, res.stderr
    return out, name


@pytest.mark.parametrize("case", ["manifest", "argv", "issue", "subdir"])
def test_ozone_manifests_go_up_ps_down(case: str, host, tmp_path: Path, env) -> None:
    path, name = manifest_for(case, host, tmp_path, env)
    jail = f"/srv/ozone/stratovirt/{name}"
    check = svl(env, "check", str(path))
    assert check.returncode == 0, check.stderr
    try:
        res = svl(env, "up", "-d", str(path))
        assert res.returncode == 0, res.stderr
        [row] = json.loads(svl(env, "ps", "--json").stdout)
        engine, supervisor = row["pid"], row["supervisor_pid"]
        assert row["name"] == name and row["state"] == "running"
        assert engine != supervisor and parent_pid(engine) == supervisor
        assert f"started (pid {engine}, sandbox supervisor {supervisor})" in res.stdout
        with open(f"/proc/{engine}/status") as f:
            assert f"Uid:\t{UID}\t" in f.read()  # the engine runs confined, as the uid
        assert row["qmp"].startswith(jail + "/") and os.path.islink(row["qmp"])
        assert_answers(row["qmp"], name)
        table = svl(env, "ps").stdout.splitlines()
        assert table[0].split()[:4] == ["NAME", "STATE", "PID", "SUPERVISOR"]
        assert table[1].split()[:4] == [name, "running", str(engine), str(supervisor)]
        down = svl(env, "down", name, "--force")
        assert down.returncode == 0, down.stderr
        assert wait_gone(engine) and wait_gone(supervisor)
    finally:
        svl(env, "down", name, "--force")
    assert not os.path.lexists(jail) and not os.path.lexists(f"{jail}.sock")
    assert not os.path.exists(f"{CG}/cpuset/stratovirt/{name}")
    assert not os.path.exists(f"{CG}/memory/stratovirt/{name}")
    assert json.loads(svl(env, "ps", "--json").stdout) == []
    left = sorted(p.name for p in (tmp_path / "rt").iterdir() if not p.name.startswith("."))
    # (dot names: the claim lock, an engine pool's files)
    assert left == [f"{name}.last.exit.json", f"{name}.last.log"]
    ended = json.loads((tmp_path / "rt" / f"{name}.last.exit.json").read_text())
    assert ended["code"] == 0 and ended["cause"] in ("host-qmp-quit", "host-signal")


def test_a_sandboxed_guest_panic_is_recorded_by_the_supervisor(host, tmp_path: Path, env) -> None:
    """The jailed engine reports its cause over a pipe; the supervisor writes the record."""
    path, name = manifest_for("manifest", host, tmp_path, env)
    files = Path(host["/var/lib/svlaunch/"])
    write_guest(files, pvpanic_event(1) + HANG, "panics.bin")
    os.chmod(files / "panics.bin", 0o644)
    path.write_text(path.read_text().replace("vmlinux.bin", "panics.bin") + "[pvpanic]\n")
    try:
        res = svl(env, "up", "-d", "--paused", str(path))
        assert res.returncode == 0, res.stderr
        [row] = json.loads(svl(env, "ps", "--json").stdout)
        assert svl(env, "qmp", name, "cont").returncode == 0
        assert wait_gone(row["pid"]) and wait_gone(row["supervisor_pid"])
        [row] = json.loads(svl(env, "ps", "-a", "--json").stdout)
    finally:
        svl(env, "down", name, "--force")
    assert row["state"] == "stopped"
    assert (row["ended"]["code"], row["ended"]["cause"]) == (7, "guest-panic"), row
    assert row["ended"]["panicked"] is True and row["ended"]["signal"] is None
    assert row["ended"]["reason"] == "the guest panicked"  # the jailed engine's own words
    assert row["ended"]["started"] is not None


def _errors(res: subprocess.CompletedProcess) -> list[str]:
    """``error[code]`` lines with the key they are at (``at KEY`` on the next line)."""
    lines = res.stderr.splitlines()
    return [
        f"{line.split('error[', 1)[1].split(']')[0]} {nxt.strip()}"
        for line, nxt in itertools.pairwise(lines)
        if "error[" in line
    ]


def test_every_sandbox_rule_is_a_located_check_error(host, tmp_path: Path, env) -> None:
    path, name = manifest_for("manifest", host, tmp_path, env)
    text = path.read_text().replace(f"/srv/ozone/stratovirt/{name}/stratovirt.socket", "/tmp/q")
    path.write_text(text.replace('serial = "stdio"', 'serial = "pty"'))
    extra = Path(host["/var/lib/svlaunch/"]) / "extra.bin"
    os.chmod(extra, 0o600)
    jail = Path(f"/srv/ozone/stratovirt/{name}")
    jail.mkdir(parents=True)  # a folder at the jail's path, made by someone else
    try:
        for cmd in ("check", "up"):
            res = svl(env, cmd, *(["-d"] if cmd == "up" else []), str(path))
            assert res.returncode == 1, res.stderr
            assert sorted(_errors(res)) == [
                "host-sandbox at name",  # the jail is in the way
                "host-sandbox at ozone.sources[0]",  # uid 100 cannot read it
                "host-sandbox at qmp",  # a socket in /tmp
                "host-sandbox at serial",  # a pty
            ], res.stderr
            assert f"{path}:3:7: error[host-sandbox]" in res.stderr  # file:line:col
        assert not (tmp_path / "rt" / name).exists()  # nothing started, nothing claimed
    finally:
        jail.rmdir()


def test_a_live_socket_at_a_jail_path_is_a_check_error(host, tmp_path: Path, env) -> None:
    """Outside a sandbox the same rule holds: a socket path something serves is refused."""
    path, name = manifest_for("manifest", host, tmp_path, env)
    qmp = str(tmp_path / "taken.sock")
    path.write_text(
        path.read_text().replace(f"/srv/ozone/stratovirt/{name}/stratovirt.socket", qmp)
    )
    impostor = start_impostor(name, qmp)
    try:
        res = svl(env, "check", str(path))
        assert res.returncode == 1 and f"in use by process {impostor.pid}" in res.stderr
        assert impostor.poll() is None
    finally:
        impostor.kill()
        impostor.wait()

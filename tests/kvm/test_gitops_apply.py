"""``svlaunch diff`` and ``svlaunch apply`` against a real git repository, with engines on this
host's KVM running the tests' tiny guests: creates, restarts, live changes over QMP, prune,
dependency order, failures that stay local, saved plans, and hostile revisions."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from gitrepo import Repo
from lifecycle import manifest, svl, wait_gone
from tiny_guest import HANG, say

from launcher.qmpclient import QmpClient

HOST = "t1"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "git")


@pytest.fixture(autouse=True)
def _stop_all(env: dict[str, str]):
    yield
    for r in ps(env):
        svl(env, "down", r["name"], "--force")


def vm(tmp: Path, name: str, top: str = "", extra: str = "") -> str:
    """A tiny-guest manifest's text (kernel and initrd at absolute paths outside the repo)."""
    img = tmp / "img"
    img.mkdir(exist_ok=True)
    return manifest(img, name, say(b"up\n") + HANG, extra=extra, top=top).read_text()


def ps(env: dict[str, str]) -> list[dict]:
    return json.loads(svl(env, "ps", "--json").stdout)


def pids(env: dict[str, str]) -> dict[str, int]:
    return {r["name"]: r["pid"] for r in ps(env)}


def run_state(qmp: str) -> str:
    """Asked with a generous timeout: ``ps`` gives up after 1 s on a loaded machine."""
    with QmpClient.connect(qmp, timeout=20) as c:
        return str(c.execute("query-status")["status"])


def apply(env: dict[str, str], repo: Repo, *more: str, rc: int = 0) -> str:
    res = svl(env, "apply", repo.source, "--host", HOST, "--yes", "--stop-timeout", "0", *more)
    assert res.returncode == rc, res.stdout + res.stderr
    return res.stdout + res.stderr


def diff(env: dict[str, str], repo: Repo, *more: str) -> tuple[int, dict]:
    res = svl(env, "diff", repo.source, "--host", HOST, "--format", "json",
              "--detailed-exitcode", *more)  # fmt: skip
    data = json.loads(res.stdout) if res.stdout.strip() else {}
    return res.returncode, data


def actions(data: dict) -> dict[str, str]:
    return {r["name"]: r["action"] for r in data["rows"]}


def test_create_then_no_changes_then_restart_and_live(tmp_path: Path, env, repo: Repo) -> None:
    disk1, disk2 = tmp_path / "d1.raw", tmp_path / "d2.raw"
    for d in (disk1, disk2):
        d.write_bytes(b"\0" * (1 << 20))
    repo.write("web/a.toml", vm(tmp_path, "a", extra=f'[drives.data]\nfile = "{disk1}"\n'))
    repo.write("b.toml", vm(tmp_path, "b", extra='[balloon]\ntarget = "96M"\n'))
    repo.commit("two VMs")
    rc, data = diff(env, repo)
    assert rc == 2 and actions(data) == {"a": "create", "b": "create"}
    out = apply(env, repo)
    assert "done     a: create" in out and "done     b: create" in out
    first = pids(env)
    assert set(first) == {"a", "b"}
    rc, data = diff(env, repo)
    assert rc == 0 and set(actions(data).values()) == {"unchanged"}  # a second apply: nothing

    repo.write("web/a.toml", vm(tmp_path, "a", extra=f'[drives.data]\nfile = "{disk2}"\n')
               .replace('size = "128M"', 'size = "256M"'))  # fmt: skip
    repo.write("b.toml", vm(tmp_path, "b", extra='[balloon]\ntarget = "64M"\n'))
    repo.commit("memory of a, balloon of b")
    rc, data = diff(env, repo)
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["a"]["action"] == "restart"
    assert {(c["key"], c["apply"]) for c in rows["a"]["changes"]} == {
        ("memory.size", "restart"),
        ("drives.data.file", "live: device_del, blockdev-del, blockdev-add, device_add"),
    }
    assert rows["b"]["action"] == "update-live"
    assert rows["b"]["changes"] == [
        {"key": "balloon.target", "old": 96 << 20, "new": 64 << 20, "apply": "live: balloon"}
    ]
    out = apply(env, repo)
    assert "b: update-live: live: balloon" in out
    now = {r["name"]: r for r in ps(env)}
    assert now["a"]["pid"] != first["a"] and now["a"]["memory"] == 256 << 20
    assert now["b"]["pid"] == first["b"]  # live: the same engine
    assert diff(env, repo)[0] == 0

    repo.write("web/a.toml", vm(tmp_path, "a", extra=f'[drives.data]\nfile = "{disk1}"\n')
               .replace('size = "128M"', 'size = "256M"'))  # fmt: skip
    repo.commit("a's disk back to d1: a hot-replace")
    rc, data = diff(env, repo)
    assert actions(data)["a"] == "update-live"
    before = pids(env)["a"]
    out = apply(env, repo)
    assert "a: update-live: live: device_del, blockdev-del, blockdev-add, device_add" in out
    assert pids(env)["a"] == before
    qmp = next(r["qmp"] for r in ps(env) if r["name"] == "a")
    with QmpClient.connect(qmp) as c:
        files = {b["qdev"]: b["inserted"]["file"] for b in c.execute("query-block")}
    assert files == {"data": str(disk1)}
    assert diff(env, repo)[0] == 0


def test_prune_destroys_only_what_svlaunch_created(tmp_path: Path, env, repo: Repo) -> None:
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.write("b.toml", vm(tmp_path, "b"))
    repo.commit()
    apply(env, repo)
    by_hand = tmp_path / "hand.toml"
    by_hand.write_text(vm(tmp_path, "hand"))
    assert svl(env, "up", "-d", str(by_hand)).returncode == 0  # not svlaunch apply's
    repo.remove("b.toml")
    repo.commit("b removed")
    rc, data = diff(env, repo)
    assert actions(data) == {"a": "unchanged", "b": "orphan", "hand": "unmanaged"}
    assert rc == 0  # without --prune nothing would change
    apply(env, repo)
    assert set(pids(env)) == {"a", "b", "hand"}
    b_pid = pids(env)["b"]
    rc, data = diff(env, repo, "--prune")
    assert rc == 2 and actions(data) == {"a": "unchanged", "b": "destroy", "hand": "unmanaged"}
    out = apply(env, repo, "--prune")
    assert "b: destroy" in out
    assert set(pids(env)) == {"a", "hand"} and wait_gone(b_pid)
    assert not (tmp_path / "rt" / "b").exists()


def test_an_invalid_revision_destroys_and_restarts_nothing(tmp_path: Path, env, repo: Repo) -> None:
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.write("b.toml", vm(tmp_path, "b"))
    repo.commit()
    apply(env, repo)
    before = pids(env)
    repo.remove("b.toml")  # deleted together with a broken manifest
    repo.write("a.toml", vm(tmp_path, "a").replace('size = "128M"', 'size = "256M"'))
    repo.write("c.toml", 'name = "c"\n[memory]\nsize = "lots"\n')
    repo.commit("hostile")
    res = svl(env, "diff", repo.source, "--host", HOST)
    assert res.returncode == 1
    assert "c.toml:3:8: error[" in res.stderr and "memory.size" in res.stderr
    assert "nothing is applied; running VMs keep running" in res.stderr
    res = svl(env, "apply", repo.source, "--host", HOST, "--yes", "--prune")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert pids(env) == before  # b not destroyed, a not restarted


def test_depends_on_order_and_one_failure_stays_local(tmp_path: Path, env, repo: Repo) -> None:
    repo.write("db.toml", vm(tmp_path, "db"))
    repo.write("web.toml", vm(tmp_path, "web", top='depends-on = ["db"]\n'))
    bad = vm(tmp_path, "bad").replace("/bad.elf", "/missing.elf")  # valid; the host lacks it
    repo.write("bad.toml", bad)
    repo.write("needs-bad.toml", vm(tmp_path, "needsbad", top='depends-on = ["bad"]\n'))
    repo.commit()
    out = apply(env, repo, "--parallel", "3", rc=1)
    assert "failed   bad: create: start failed: " in out
    assert "bad.toml:11:10: error[host-file]: kernel" in out
    assert "skipped  needsbad: create: its dependency bad failed" in out
    running = {r["name"]: r for r in ps(env)}
    assert set(running) == {"db", "web"}
    assert running["db"]["started"] <= running["web"]["started"]
    rc, data = diff(env, repo)
    assert actions(data)["bad"] == "drift" and rc == 2  # owed a start; the next apply tries


def test_saved_plans_are_refused_when_the_host_or_the_source_changed(
    tmp_path: Path, env, repo: Repo
) -> None:
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.commit()
    plan = tmp_path / "p.json"
    res = svl(env, "apply", repo.source, "--host", HOST, "--dry-run", "--plan", str(plan))
    assert res.returncode == 0 and plan.exists() and ps(env) == []
    assert apply(env, repo, "--plan", str(plan))
    assert set(pids(env)) == {"a"}
    svl(env, "apply", repo.source, "--host", HOST, "--dry-run", "--plan", str(plan))
    svl(env, "qmp", "a", "stop")  # the host changed
    res = svl(env, "apply", repo.source, "--host", HOST, "--plan", str(plan))
    assert res.returncode == 1 and "this host changed since the plan was saved" in res.stderr
    svl(env, "apply", repo.source, "--host", HOST, "--dry-run", "--plan", str(plan))
    repo.write("b.toml", vm(tmp_path, "b"))
    repo.commit("the source changed")
    res = svl(env, "apply", repo.source, "--host", HOST, "--plan", str(plan))
    assert res.returncode == 1 and "the plan was made for revision" in res.stderr
    res = svl(env, "apply", repo.source, "--host", "other", "--plan", str(plan))
    assert res.returncode == 1 and "the plan was made for host 't1'" in res.stderr
    assert set(pids(env)) == {"a"}


def test_lost_state_killed_and_paused_vms(tmp_path: Path, env, repo: Repo) -> None:
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.write("b.toml", vm(tmp_path, "b", top='restart = "never"\n'))
    repo.write("c.toml", vm(tmp_path, "c"))
    repo.commit()
    apply(env, repo)
    before = pids(env)
    state = tmp_path / "rt" / ".gitops" / "state.json"
    state.write_text('{"version": 1, "host": ')  # corrupt
    rc, data = diff(env, repo)
    assert rc == 0 and set(actions(data).values()) == {"unchanged"}
    out = apply(env, repo, "--prune")
    assert "corrupt" in out and "3 adopted" in out
    assert pids(env) == before  # nothing killed because the state was lost
    assert json.loads(state.read_text())["vms"]["a"]["created"] is True
    for name in ("a", "b"):
        os.kill(before[name], signal.SIGKILL)
        assert wait_gone(before[name])
    svl(env, "qmp", "c", "stop")
    time.sleep(0.2)
    rc, data = diff(env, repo)
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["a"]["action"] == "drift" and rows["a"]["fix"] == "start"
    assert rows["b"]["skip"].startswith("restart = never")
    assert rows["c"]["fix"] == "cont" and "paused" in rows["c"]["reason"]
    out = apply(env, repo)
    now = {r["name"]: r for r in ps(env)}
    assert set(now) == {"a", "c"} and now["c"]["pid"] == before["c"]
    assert run_state(now["c"]["qmp"]) == "running"
    assert "left" in out and "restart = never" in out

"""``svlaunch agent``: three "hosts" on this machine (three host names, three runtime roots,
three agents, one git repository) converge on what the repository says, through commits that
move a VM, hostile revisions, a force-push, an unreachable remote, a corrupt state file, a VM
killed with SIGKILL and an agent killed in the middle of an apply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gitrepo import Repo
from lifecycle import ROOT, manifest, svl, wait_gone
from tiny_guest import HANG, say

DEADLINE = 120.0  # seconds to converge: generous, the CI machine has 2 shared cores


class AgentProc:
    """A real ``svlaunch agent`` process; its NDJSON events collected as they come."""

    def __init__(self, env: dict[str, str], source: str, host: str, *more: str) -> None:
        self.env = env
        self.host = host
        self.events: list[dict] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "agent", source, "--host", host,
             "--interval", "1s", "--stop-timeout", "2s", "--backoff", "500ms", *more],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))  # every line is one JSON object

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr += self.proc.stderr.read()

    def wait_event(self, test: Callable[[dict], bool], timeout: float = DEADLINE) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for ev in self.events[seen:]:
                if test(ev):
                    return ev
            seen = len(self.events)
            assert self.proc.poll() is None, f"agent {self.host} exited: {self.stderr}"
            time.sleep(0.1)
        told = [e for e in self.events if e["event"] != "look"]  # what happened, looks aside
        raise AssertionError(f"agent {self.host}: no such event; saw {told} {self.events[-3:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        time.sleep(0.2)
        assert "Traceback" not in self.stderr, self.stderr


@pytest.fixture
def hosts(tmp_path: Path):
    envs = {
        h: {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / f"rt-{h}")}
        for h in ("h1", "h2", "h3")
    }
    agents: list[AgentProc] = []
    yield envs, agents
    for a in agents:
        a.stop()
    for env in envs.values():
        for r in ps(env):
            svl(env, "down", r["name"], "--force")


def vm(tmp: Path, name: str, top: str = "") -> str:
    img = tmp / "img"
    img.mkdir(exist_ok=True)
    return manifest(img, name, say(b"up\n") + HANG, top=top).read_text()


def ps(env: dict[str, str]) -> list[dict]:
    res = svl(env, "ps", "--json")
    return json.loads(res.stdout) if res.returncode == 0 else []


def running(env: dict[str, str]) -> dict[str, int]:
    """The VMs that run (a VM still starting has no engine pid yet: not counted)."""
    return {r["name"]: r["pid"] for r in ps(env) if r.get("pid")}


def converge(envs: dict[str, dict[str, str]], want: dict[str, set[str]]) -> dict[str, dict]:
    """Wait until each host runs exactly ``want[host]``; their pids."""
    deadline = time.monotonic() + DEADLINE
    while True:
        now = {h: running(envs[h]) for h in want}
        if all(set(now[h]) == want[h] for h in want):
            return now
        assert time.monotonic() < deadline, f"no convergence: want {want}, have {now}"
        time.sleep(0.5)


def test_three_hosts_converge_and_a_commit_moves_a_vm(tmp_path: Path, hosts) -> None:
    envs, agents = hosts
    repo = Repo(tmp_path / "git")
    repo.write("h1/a.toml", vm(tmp_path, "a", 'hosts = ["h1"]\n'))
    repo.write("h2/b.toml", vm(tmp_path, "b", 'hosts = ["h2"]\n'))
    repo.write("all/c.toml", vm(tmp_path, "c"))  # every host
    repo.commit("three hosts")
    for h in envs:
        agents.append(AgentProc(envs[h], repo.source, h, "--prune"))
    first = converge(envs, {"h1": {"a", "c"}, "h2": {"b", "c"}, "h3": {"c"}})
    repo.write("h1/a.toml", vm(tmp_path, "a", 'hosts = ["h2"]\n'))  # a moves to h2
    repo.commit("move a")
    now = converge(envs, {"h1": {"c"}, "h2": {"a", "b", "c"}, "h3": {"c"}})
    assert now["h2"]["b"] == first["h2"]["b"]  # the others were not touched
    assert now["h1"]["c"] == first["h1"]["c"]
    agents[0].wait_event(lambda e: e["event"] == "vm-result" and e["vm"] == "a"
                         and e["action"] == "destroy" and e["result"] == "done")  # fmt: skip
    status = svl(envs["h2"], "agent", "status", "--json")
    data = json.loads(status.stdout)
    assert status.returncode == 0 and data["running"] and data["host"] == "h2"
    assert data["vms"]["a"]["action"] in ("create", "unchanged")


def test_hostile_repository(tmp_path: Path, hosts) -> None:
    envs, agents = hosts
    env = envs["h1"]
    repo = Repo(tmp_path / "git")
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.write("b.toml", vm(tmp_path, "b"))
    good = repo.commit("good")
    agent = AgentProc(env, repo.source, "h1", "--prune")
    agents.append(agent)
    pids = converge(envs, {"h1": {"a", "b"}})["h1"]

    # a manifest deleted together with a broken one: skipped, nothing destroyed
    repo.remove("b.toml")
    repo.write("c.toml", 'name = "c"\n[memory]\nsize = "lots"\n')
    bad = repo.commit("hostile")
    ev = agent.wait_event(lambda e: e["event"] == "revision-invalid" and e["revision"] == bad)
    assert any("c.toml:3:8: error[" in text for text in ev["errors"])
    time.sleep(2.5)  # two more looks: still nothing changed
    assert running(env) == pids
    status = json.loads(svl(env, "agent", "status", "--json").stdout)
    assert status["result"] == "invalid" and status["last_good"] == good

    # a VM killed between fetches while the newest revision is bad: the last good restarts it
    os.kill(pids["a"], signal.SIGKILL)
    agent.wait_event(lambda e: e["event"] == "vm-exited" and e["vm"] == "a")
    agent.wait_event(lambda e: e["event"] == "vm-result" and e["vm"] == "a"
                     and e["result"] == "done")  # fmt: skip
    after_kill = converge(envs, {"h1": {"a", "b"}})["h1"]
    assert after_kill["a"] != pids["a"] and after_kill["b"] == pids["b"]

    # a force-push back to the good commit, then an unreachable remote: nothing changes
    repo.force_back(good)
    agent.wait_event(lambda e: e["event"] == "look" and e["revision"] == good
                     and e["result"] == "ok")  # fmt: skip
    moved = tmp_path / "moved.git"
    os.rename(repo.bare, moved)
    agent.wait_event(lambda e: e["event"] == "fetch-failed")
    time.sleep(1.5)
    assert running(env) == after_kill
    os.rename(moved, repo.bare)

    # a corrupt state file: rebuilt from the running VMs, none killed
    state = tmp_path / "rt-h1" / ".gitops" / "state.json"
    state.write_text("{corrupt")
    agent.wait_event(lambda e: e["event"] == "state-rebuilt")
    time.sleep(1.5)
    assert running(env) == after_kill

    # the agent stopped and started again: it adopts the VMs, touches none
    agent.stop()
    assert running(env) == after_kill
    again = AgentProc(env, repo.source, "h1", "--prune")
    agents.append(again)
    again.wait_event(lambda e: e["event"] == "look" and e["result"] == "ok")
    assert running(env) == after_kill


def test_agent_killed_in_the_middle_of_an_apply(tmp_path: Path, hosts) -> None:
    """SIGKILL while the agent restarts a VM (the guest ignores the power button, so the stop
    waits): the next agent finishes what the first owed."""
    envs, agents = hosts
    env = envs["h1"]
    repo = Repo(tmp_path / "git")
    repo.write("a.toml", vm(tmp_path, "a"))
    repo.commit("one")
    agent = AgentProc(env, repo.source, "h1", "--stop-timeout", "3s")
    agents.append(agent)
    before = converge(envs, {"h1": {"a"}})["h1"]["a"]
    repo.write("a.toml", vm(tmp_path, "a").replace('size = "128M"', 'size = "256M"'))
    repo.commit("more memory")
    agent.wait_event(lambda e: e["event"] == "vm-apply" and e["vm"] == "a")
    agent.stop(signal.SIGKILL)
    again = AgentProc(env, repo.source, "h1")
    agents.append(again)
    deadline = time.monotonic() + DEADLINE
    while True:
        now = {r["name"]: r for r in ps(env)}
        if "a" in now and now["a"].get("memory") == 256 << 20 and now["a"].get("pid"):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert now["a"]["pid"] != before and wait_gone(before)

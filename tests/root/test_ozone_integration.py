"""The sandbox for real (root): a payload runs jailed; the host reads /proc/<pid>/ to check it.

Until ``python -m engine run`` exists the payload is ``python -m engine.ozone.probe``: it imports
the project inside the jail (proving the read-only runtime mounts work), installs the "main"
seccomp filter, prints what it sees, and waits for stdin to close.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ozone_plans import UID, make_plan, realize_piped

from engine.ozone.errors import SandboxError
from engine.ozone.sandbox import Sandbox, _mounts_under

pytestmark = [pytest.mark.root, pytest.mark.kvm]
PROBE = [sys.executable, "-m", "engine.ozone.probe"]
CG = "/sys/fs/cgroup"


@pytest.fixture
def netns():
    name = f"svtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "delete", name], check=False)


STARTED: list[Sandbox] = []


@pytest.fixture(autouse=True)
def _cleanup():
    """A failed assertion must not leave a jail or cgroup behind for the next test."""
    yield
    while STARTED:
        sb = STARTED.pop()
        pid = sb.state.engine_pid
        if pid:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        try:
            sb.teardown(check_alive=False)
        except SandboxError:
            pass


def _start(plan, tmp_path, argv=PROBE):
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    STARTED.append(sb)
    jailed, w, out = realize_piped(sb, argv)
    return sb, jailed, w, out


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_payload_runs_jailed_and_teardown_leaves_nothing(tmp_path, netns):
    cg = (("cpuset.cpus", "0"), ("memory.limit_in_bytes", "512M"))
    plan = make_plan(
        str(tmp_path), sandbox=dict(netns=netns, cgroup=cg, numa="0", capabilities=("CAP_NET_RAW",))
    )
    sb, jailed, stdin_w, out = _start(plan, tmp_path)
    pid = jailed.pid
    try:
        facts = json.loads(out.readline())
        assert facts["pid"] == 1 and facts["uid"] == UID and facts["hostname"] == "vm1"
        assert facts["dev"] == ["kvm", "null", "urandom"]  # no net device: no /dev/net/tun
        root = sorted(os.listdir(f"/proc/{pid}/root"))
        assert root == facts["root"]
        assert {"dev", "plan.json", "seccomp"} <= set(root)
        top = {p.split("/")[1] for b in sb.spec.binds for p in (b.target, b.alias) if p}
        assert set(root) == top | {"dev", "plan.json", "seccomp"}  # nothing else in the jail
        for ns in ("mnt", "uts", "ipc", "pid", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        assert (
            os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        )  # it joined the named one
        st = _status(pid)
        assert st["Uid"].split() == [str(UID)] * 4 and st["Gid"].split() == [str(UID)] * 4
        want = f"{1 << 13:016x}"  # CAP_NET_RAW only
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert st[key] == want, key
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        with open(f"{CG}/cpuset/stratovirt/vm1/cpuset.cpus") as f:
            assert f.read().strip() == "0"
        with open(f"{CG}/memory/stratovirt/vm1/memory.limit_in_bytes") as f:
            assert int(f.read()) == 512 << 20
        with open(f"/proc/{pid}/cgroup") as f:
            assert "memory:/stratovirt/vm1" in f.read()
        assert _mounts_under(sb.spec.jail) == []  # every mount lives in the jail's namespace
        with pytest.raises(SandboxError, match="still running"):
            sb.teardown()
    finally:
        os.close(stdin_w)
        end = jailed.wait()
    assert end.code == 0, end.reason
    sb.teardown()
    assert not os.path.exists(sb.spec.jail)
    assert not os.path.exists(f"{CG}/cpuset/stratovirt/vm1") and not os.path.exists(
        f"{CG}/memory/stratovirt/vm1"
    )
    assert not os.path.exists(f"{tmp_path}/run")  # the socket dir it made
    # the same name again works
    sb2, jailed2, w2, out2 = _start(plan, tmp_path)
    assert json.loads(out2.readline())["uid"] == UID
    os.close(w2)
    assert jailed2.wait().code == 0
    sb2.teardown()


def test_second_realize_while_running_is_refused(tmp_path):
    plan = make_plan(str(tmp_path))
    sb, jailed, w, out = _start(plan, tmp_path)
    try:
        out.readline()
        with pytest.raises(SandboxError) as e:
            Sandbox.from_plan(plan, state_dir=str(tmp_path / "state")).realize(PROBE)
        assert "the jail already exists" in str(e.value) and "teardown" in str(e.value)
    finally:
        os.close(w)
        jailed.wait()
        sb.teardown()


def test_seccomp_kill_is_reported_and_teardown_cleans_after_the_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("SVLAUNCH_TEST_FORBIDDEN_SYSCALL", "1")
    plan = make_plan(str(tmp_path), sandbox=dict(cgroup=(("memory.limit_in_bytes", "256M"),)))
    sb, jailed, w, _out = _start(plan, tmp_path)
    end = jailed.wait()
    os.close(w)
    assert end.seccomp and end.reason.startswith("killed by seccomp (SIGSYS)")
    assert os.path.isdir(sb.spec.jail)  # a crash leaves the jail: the state file knows it
    from engine.ozone.sandbox import teardown_named

    teardown_named("vm1", "stratovirt", str(tmp_path / "state"))
    assert not os.path.exists(sb.spec.jail) and not os.path.exists(f"{CG}/memory/stratovirt/vm1")


def test_a_failing_step_names_itself_and_undoes_the_rest(tmp_path):
    plan = make_plan(str(tmp_path))
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    with pytest.raises(SandboxError) as e:
        sb.realize(["/nonexistent/payload"])
    assert "sandbox exec" in str(e.value) and "/nonexistent/payload" in str(e.value)
    assert not os.path.exists(sb.spec.jail)


def test_cli_runs_and_cleans_with_clean_resource(tmp_path):
    plan = make_plan(str(tmp_path), sandbox=dict(clean_resource=True))
    pf = tmp_path / "plan.json"
    pf.write_text(plan.dumps())
    res = subprocess.run(
        [sys.executable, "-m", "engine.ozone", "run", "--plan", str(pf), "--state-dir", str(tmp_path / "st"), "--", *PROBE],
        input="", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["uid"] == UID
    assert not os.path.exists(f"{tmp_path}/srv/stratovirt/vm1")


def _engine_plan(tmp_path, payload: bytes, **sandbox):
    """A tiny real guest (tests/support/tiny_guest.py) for ``python -m engine run`` inside the jail."""
    import dataclasses

    from tiny_guest import hello_poweroff, write_guest  # noqa: F401
    from tiny_guest import make_plan as guest_plan

    from engine.plan import HostFile, SandboxPlan

    run = tmp_path / "vmrun"
    run.mkdir()
    os.chown(run, UID, UID)
    out = run / "serial"
    plan = guest_plan(write_guest(tmp_path, payload), serial_file=out)
    sb = SandboxPlan(
        name="vm1",
        exec_file="/usr/bin/stratovirt",
        uid=UID,
        gid=UID,
        root=str(tmp_path / "srv"),
        **sandbox,
    )
    files = (HostFile(plan.boot.kernel, "kernel"), HostFile(str(out), "chardev", True))
    return dataclasses.replace(plan, sandbox=sb, host_files=files, seccomp=True), out


def test_real_engine_boots_a_guest_in_the_sandbox(tmp_path):
    from tiny_guest import hello_poweroff

    plan, out = _engine_plan(
        tmp_path, hello_poweroff(b"jailed\n"), cgroup=(("memory.limit_in_bytes", "1G"),)
    )
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    STARTED.append(sb)
    end = sb.realize().wait()  # the default payload: python -m engine run --plan /plan.json
    assert end.code == 0, end.reason
    assert out.read_bytes() == b"jailed\n"
    sb.teardown()
    assert not os.path.exists(sb.spec.jail) and not os.path.exists(f"{CG}/memory/stratovirt/vm1")


def test_real_engine_forbidden_syscall_is_killed_and_named(tmp_path, monkeypatch):
    from tiny_guest import hello_poweroff

    monkeypatch.setenv("SVLAUNCH_TEST_FORBIDDEN_SYSCALL", "vcpu")
    plan, _ = _engine_plan(tmp_path, hello_poweroff(b"x\n"))
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    STARTED.append(sb)
    end = sb.realize().wait()
    assert end.seccomp, end.reason
    assert end.reason.startswith("killed by seccomp (SIGSYS)")

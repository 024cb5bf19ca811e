"""The jail as ``/`` on an initramfs root (MS_MOVE + chroot), socket redirects, crash clean-up.

Units: mountinfo parsing, when ``pivot_root`` cannot work, what is detached before the move.
Integration (root + /dev/kvm): the probe payload jailed with the ``move`` mode forced on this
(normal) host sees exactly what the ``pivot`` mode shows; a socket in a dir the VM's uid cannot
write reaches the host through the symlink; a killed supervisor's sandbox is cleaned by the next
``run`` of the same name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from ozone_plans import UID, make_plan, realize_piped

from engine.ozone import rootfs
from engine.ozone.sandbox import Sandbox, _mounts_under

INITRAMFS = """\
1 1 0:2 / / rw - rootfs rootfs rw,size=991248k
22 1 0:20 / /proc rw,relatime - proc proc rw
24 1 0:5 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
25 24 0:22 / /dev/pts rw,relatime - devpts devpts rw,mode=600
27 23 0:24 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
30 1 0:30 / /srv rw - tmpfs tmpfs rw
31 30 0:31 / /srv/ozone/se/vm rw - tmpfs tmpfs rw
32 31 0:32 / /srv/ozone/se/vm/usr rw - ext4 /dev/sda rw
33 1 0:33 / /srv\\040x rw - tmpfs tmpfs rw
"""
DISK = """\
25 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
26 25 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
"""


def test_mountinfo_is_parsed_with_escapes():
    mounts = rootfs.parse_mountinfo(INITRAMFS)
    assert mounts[0] == rootfs.MountEntry(1, 1, "/", "rootfs")
    assert mounts[-1].point == "/srv x"
    assert rootfs.parse_mountinfo(DISK)[0].fstype == "ext4"


def test_initramfs_root_cannot_pivot():
    assert not rootfs.root_has_parent(rootfs.parse_mountinfo(INITRAMFS))
    assert rootfs.root_has_parent(rootfs.parse_mountinfo(DISK))
    # a real root mounted over rootfs (after switch_root): the last "/" is the one in effect
    switched = INITRAMFS + "40 1 0:40 / / rw - tmpfs tmpfs rw\n"
    assert rootfs.root_has_parent(rootfs.parse_mountinfo(switched))


def test_choose_reads_mountinfo(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(INITRAMFS)
    assert rootfs.choose(str(f)) == rootfs.MOVE
    f.write_text(DISK)
    assert rootfs.choose(str(f)) == rootfs.PIVOT
    assert rootfs.choose(str(tmp_path / "missing")) == rootfs.PIVOT


def test_everything_off_the_jails_path_is_detached_deepest_first():
    got = rootfs.to_detach(rootfs.parse_mountinfo(INITRAMFS), "/srv/ozone/se/vm")
    # kept: "/", /srv (holds the jail), the jail and its binds
    assert got == ["/sys/fs/cgroup", "/dev/pts", "/srv x", "/proc", "/dev"]


# -- integration (root, /dev/kvm) -------------------------------------------------------------

PROBE = [sys.executable, "-m", "engine.ozone.probe"]


def _probe_facts(tmp_path, mode: str) -> tuple[dict, Sandbox]:
    plan = make_plan(str(tmp_path / mode))
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / mode / "state"), root_mode=mode)
    jailed, w, out = realize_piped(sb, PROBE)
    try:
        facts = json.loads(out.readline())
        facts["proc_root"] = sorted(os.listdir(f"/proc/{jailed.pid}/root"))
        facts["host_mounts_under_jail"] = _mounts_under(sb.spec.jail)
    finally:
        os.close(w)
        end = jailed.wait()
        sb.teardown()
    assert end.code == 0, end.reason
    assert not os.path.exists(sb.spec.jail)
    return facts, sb


@pytest.mark.root
@pytest.mark.kvm
def test_move_mode_jails_like_pivot(tmp_path):
    pivot, _ = _probe_facts(tmp_path, rootfs.PIVOT)
    move, _ = _probe_facts(tmp_path, rootfs.MOVE)
    for facts in (pivot, move):
        assert facts["pid"] == 1 and facts["uid"] == UID
        assert facts["root"] == facts["proc_root"]  # the kernel's idea of its root is the jail
        assert facts["host_mounts_under_jail"] == []
        assert {"dev", "plan.json", "seccomp"} <= set(facts["root"])
        assert facts["dev"] == ["kvm", "null", "urandom"]
    strip = lambda f: [x for x in f["root"] if x != "tmp"]  # noqa: E731  (pytest's tmp_path top)
    assert strip(move) == strip(pivot)


LISTENER = (
    "import os, socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1);"
    " print(os.getuid(), flush=True); c, _ = s.accept(); c.sendall(b'hello'); sys.stdin.read()"
)


@pytest.mark.root
@pytest.mark.kvm
def test_socket_in_a_root_only_dir_reaches_the_host_through_a_link(tmp_path):
    d = tmp_path / "vmrun"  # like svlaunch's /run/svlaunch/<vm>: root, 0700
    d.mkdir(mode=0o700)
    (d / "engine.log").write_text("root's file")
    qmp = str(d / "qmp.sock")
    import dataclasses

    plan = make_plan(str(tmp_path))
    plan = dataclasses.replace(plan, qmp=(*plan.qmp, qmp))
    sb = Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    assert len(sb.spec.redirects) == 1 and sb.spec.redirects[0][0] == qmp
    jailed, w, out = realize_piped(sb, [sys.executable, "-c", LISTENER, qmp])
    try:
        assert out.readline().strip() == str(UID)
        assert os.path.islink(qmp)
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(qmp)
            assert c.recv(5) == b"hello"
        # the engine saw a private dir at that path, not root's files
        assert os.listdir(f"/proc/{jailed.pid}/root{d}") == ["qmp.sock"]
    finally:
        os.close(w)
        end = jailed.wait()
    assert end.code == 0, end.reason
    sb.teardown()
    assert sorted(os.listdir(d)) == ["engine.log"]  # link gone, root's file kept
    assert not os.path.exists(os.path.dirname(sb.spec.redirects[0][1]))


@pytest.mark.root
@pytest.mark.kvm
def test_killed_supervisor_is_cleaned_up_by_the_next_run(tmp_path):
    plan = make_plan(str(tmp_path), sandbox=dict(cgroup=(("memory.limit_in_bytes", "256M"),)))
    pf = tmp_path / "plan.json"
    pf.write_text(plan.dumps())
    state = str(tmp_path / "st")
    cmd = [sys.executable, "-m", "engine.ozone", "run", "--plan", str(pf), "--state-dir", state]
    sup = subprocess.Popen([*cmd, "--", *PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert sup.stdout is not None
    assert json.loads(sup.stdout.readline())["uid"] == UID
    jail = f"{tmp_path}/srv/stratovirt/vm1"
    assert os.path.isdir(jail)
    sup.send_signal(signal.SIGKILL)  # a crash: no teardown; the engine dies with it (PDEATHSIG)
    sup.wait()
    time.sleep(0.2)
    assert os.path.isdir(jail)  # left behind, with its state file
    res = subprocess.run([*cmd, "--", *PROBE], input="", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["uid"] == UID
    assert not os.path.exists(jail)  # the second run cleaned the first and then its own
    assert "stratovirt-vm1.json" not in os.listdir(state)  # its state file too
    assert "cleaned up after a crashed sandbox 'vm1'" in res.stderr


@pytest.mark.root
@pytest.mark.kvm
def test_keep_leaves_the_jail_for_inspection(tmp_path):
    plan = make_plan(str(tmp_path))
    pf = tmp_path / "plan.json"
    pf.write_text(plan.dumps())
    state = str(tmp_path / "st")
    base = [sys.executable, "-m", "engine.ozone"]
    run = [*base, "run", "--plan", str(pf), "--state-dir", state, "--keep", "--", *PROBE]
    res = subprocess.run(run, input="", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    jail = f"{tmp_path}/srv/stratovirt/vm1"
    assert os.path.isdir(jail)
    td = [*base, "teardown", "--name", "vm1", "--exec", "stratovirt", "--state-dir", state]
    assert subprocess.run(td, capture_output=True).returncode == 0
    assert not os.path.exists(jail)


@pytest.mark.root
@pytest.mark.kvm
def test_a_client_socket_is_never_redirected(tmp_path):
    """The engine connects to a client chardev socket that someone else made: replacing it by
    a link would break that server, so the dir must be reachable (named with its chown hint)."""
    import dataclasses

    from engine.plan import ChardevPlan, SerialPlan
    from launcher.errors import InvalidInput

    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    path = str(d / "console.sock")
    plan = make_plan(str(tmp_path))
    plan = dataclasses.replace(plan, serial=SerialPlan(ChardevPlan("s0", "socket", path, False)))
    with pytest.raises(InvalidInput) as e:
        Sandbox.from_plan(plan, state_dir=str(tmp_path / "state"))
    assert f"cannot read and write chardev socket directory '{d}'" in str(e.value)
    assert f"chown {UID}:{UID} {d}" in str(e.value)
    server = dataclasses.replace(plan, serial=SerialPlan(ChardevPlan("s0", "socket", path, True)))
    sb = Sandbox.from_plan(server, state_dir=str(tmp_path / "state"))
    assert [h for h, _ in sb.spec.redirects] == [path]

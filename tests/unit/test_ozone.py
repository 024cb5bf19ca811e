"""Sandbox units that run unprivileged: plan validation, jail layout, capabilities, state, exits."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
from ozone_plans import HAVE_KVM, UID, make_plan, realize_piped  # noqa: F401

from engine.ozone import caps, exits
from engine.ozone.cgroup import CgroupSet, Limits
from engine.ozone.layout import Bind, apply_ops, can_access, mirror, plan_ops
from engine.ozone.runtime import Runtime, discover
from engine.ozone.sandbox import Sandbox, teardown_state
from engine.ozone.state import State
from engine.plan import (
    HostFile,
    Plan,
)
from launcher.errors import InvalidInput

TINY = Runtime("/usr/bin/true", ())  # no interpreter closure: keeps unit tests fast


def _issues(plan: Plan) -> str:
    with pytest.raises(InvalidInput) as e:
        Sandbox.from_plan(plan, runtime=TINY)
    return str(e.value)


@pytest.mark.skipif(
    os.geteuid() != 0 or not HAVE_KVM, reason="needs root to chown the drive, and /dev/kvm"
)
def test_from_plan_places_every_vm_file(tmp_path):
    plan = make_plan(str(tmp_path))
    sb = Sandbox.from_plan(plan, runtime=TINY)
    spec = sb.spec
    assert spec.jail == f"{tmp_path}/srv/stratovirt/vm1"
    roles = {b.role: b for b in spec.binds}
    assert roles["kernel"].writable is False and roles["drive"].writable is True
    assert roles["qmp-dir"].target == f"{tmp_path}/run" and spec.own_dirs == (f"{tmp_path}/run",)
    assert [d.path for d in spec.devices] == ["/dev/kvm", "/dev/urandom", "/dev/null"]
    assert '"pidfile": null' in spec.plan_json


def test_validation_collects_every_problem(tmp_path):
    plan = make_plan(
        str(tmp_path),
        sandbox=dict(uid=70000, capabilities=("net_admin", "CAP_BOGUS"), netns="/etc/hostname",
                     cgroup=(("cpu.shares", "5"),), name="a/b"),
    )  # fmt: skip
    text = _issues(plan)
    for needle in (
        "uid 70000 is not a number in 0..65535",
        "'net_admin' needs the CAP_ prefix",
        "unknown capability 'CAP_BOGUS'",
        "'/etc/hostname' does not exist or is not a namespace file",
        "unsupported cgroup key 'cpu.shares'",
        "sandbox name 'a/b'",
    ):
        assert needle in text
    assert "ozone.netns" in text and "ip netns add" in text


def test_netns_of_another_kind_is_named(tmp_path):
    text = _issues(make_plan(str(tmp_path), sandbox=dict(netns="/proc/self/ns/uts")))
    assert "not a network namespace" in text


def test_missing_drive_is_named(tmp_path):
    plan = make_plan(str(tmp_path))
    os.unlink(plan.devices[0].file)
    assert f"drive '{plan.devices[0].file}': No such file or directory" in _issues(plan)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the drive to another uid")
def test_uid_without_access_to_a_drive(tmp_path):
    text = _issues(make_plan(str(tmp_path), drive_owner=0))
    assert "uid 1000 (gid 1000) cannot read and write drive" in text
    assert f"chown 1000:1000 {tmp_path}/disk.img" in text


def test_socket_in_a_shared_dir_is_refused(tmp_path):
    plan = make_plan(str(tmp_path))
    plan = dataclasses.replace(plan, host_files=(HostFile("/tmp/qmp.sock", "qmp", True),))
    assert "shared directory '/tmp'" in _issues(plan)


def test_can_access():
    st = os.stat_result((0o100640, 0, 0, 1, 5, 6, 0, 0, 0, 0))
    assert can_access(st, 5, 9, 6) and not can_access(st, 7, 6, 2) and can_access(st, 7, 6, 4)
    assert not can_access(st, 7, 8, 4) and can_access(st, 0, 0, 7)


def test_caps_parse():
    mask, errs = caps.parse(("cap_net_admin", "CAP_SYS_NICE"))
    assert errs == [] and caps.names_of(mask) == ["CAP_NET_ADMIN", "CAP_SYS_NICE"]
    assert caps.parse(None) == (0, [])
    assert len(caps.CAPS) == 41 and caps.CAPS["CAP_CHECKPOINT_RESTORE"] == 40


def test_mirror_reproduces_symlinks_and_targets_real_paths(tmp_path):
    host = tmp_path / "host"
    (host / "usr/lib").mkdir(parents=True)
    (host / "usr/lib/libc.so.6").write_text("x")
    (host / "lib").symlink_to("usr/lib")
    (host / "bin").mkdir()
    (host / "bin/python").symlink_to(str(host / "usr/lib/libc.so.6"))
    ops: dict = {}
    real = mirror(str(host / "bin/python"), ops)
    assert real == str(host / "usr/lib/libc.so.6")
    binds = [Bind(real, real, False, alias=str(host / "lib/libc.so.6"))]
    jail = tmp_path / "jail"
    jail.mkdir()
    apply_ops(str(jail), plan_ops(binds, extra_dirs=("/dev",)) + list(ops.values()))
    assert os.readlink(f"{jail}{host}/lib") == "usr/lib"
    assert os.path.isfile(f"{jail}{host}/usr/lib/libc.so.6")
    assert os.path.getsize(f"{jail}{host}/usr/lib/libc.so.6") == 0  # an empty mount target
    assert os.path.isdir(f"{jail}/dev")


def test_runtime_closure_holds_interpreter_stdlib_and_project():
    rt = discover()
    paths = set(rt.paths)
    assert os.path.realpath(rt.executable) in paths
    assert any(p.endswith("/engine") for p in paths)
    assert not any(p.endswith("/launcher") for p in paths)  # the engine runs without it
    assert any("libc.so" in p for p in paths)
    assert not any("libX11" in p or "libtk" in p for p in paths)  # GUI extensions stay out


def test_teardown_from_state_removes_only_what_was_made(tmp_path):
    jail = tmp_path / "srv/stratovirt/vm1"
    (jail / "dev").mkdir(parents=True)
    sock_dir = tmp_path / "run"
    sock_dir.mkdir()
    state = State("vm1", "stratovirt", str(jail), jail_created=True, made_dirs=[str(sock_dir)],
                  engine_pid=2**22 + 5)  # fmt: skip
    teardown_state(state, CgroupSet(Limits(), "stratovirt", "vm1"))
    assert not jail.exists() and not sock_dir.exists()
    (jail).mkdir(parents=True)
    teardown_state(State("vm1", "stratovirt", str(jail)), CgroupSet(Limits(), "stratovirt", "vm1"))
    assert jail.exists()  # a jail this sandbox did not create is left alone


def test_state_round_trip(tmp_path):
    s = State("vm1", "sv", "/srv/ozone/sv/vm1", cgroups=["/a"], engine_pid=3)
    path = State.path_for(str(tmp_path), "sv", "vm1")
    s.save(path)
    assert State.load(path) == s


def test_exit_reasons(tmp_path):
    assert exits.describe(1, 0).reason == "exited normally"
    assert exits.describe(1, 3 << 8).shell_status == 3
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(
        '6,1,2,-;audit: type=1326 audit(1:2): auid=1 uid=0 pid=41 comm="x" sig=31 syscall=135 code=0\n'
        '6,1,2,-;audit: type=1326 audit(1:2): auid=1 uid=0 pid=42 comm="x" sig=31 syscall=101 code=0\n'
    )
    end = exits.describe(42, signal.SIGSYS, str(kmsg))
    assert end.seccomp and end.shell_status == 128 + 31
    assert end.reason.startswith("killed by seccomp (SIGSYS)") and "ptrace (101)" in end.reason
    assert (
        exits.describe(9, signal.SIGSYS, str(tmp_path / "none")).reason
        == "killed by seccomp (SIGSYS)"
    )
    assert exits.describe(9, signal.SIGKILL).reason == "killed by SIGKILL"


# -- sockets in the jail, pty, located issues, one copy of the rules (issue 13, finding 5) ------


def test_a_socket_in_the_jail_is_redirected_not_made_or_refused(tmp_path):
    """ozone's ``-qmp unix:./qmp.sock``: the jail does not exist before realize() makes it; the
    engine's socket goes to a private dir bound at that path in the jail, reached by a link."""
    plan = make_plan(str(tmp_path))
    jail = f"{tmp_path}/srv/stratovirt/vm1"
    sockets = (f"{jail}/qmp.sock", f"{jail}/run/q2.sock")
    files = tuple(f for f in plan.host_files if f.role != "qmp")
    plan = dataclasses.replace(plan, qmp=sockets, host_files=files)
    spec = Sandbox.from_plan(plan, runtime=TINY).spec if os.geteuid() == 0 else None
    if spec is None:  # the drive's owner check needs root: build the spec with uid = ours
        plan = dataclasses.replace(
            plan, sandbox=dataclasses.replace(plan.sandbox, uid=os.getuid(), gid=os.getgid())
        )
        spec = Sandbox.from_plan(plan, runtime=TINY).spec
    base = f"{tmp_path}/srv/stratovirt/vm1.sock"
    assert spec.redirects == (
        (f"{jail}/qmp.sock", f"{base}/0/qmp.sock"),
        (f"{jail}/run/q2.sock", f"{base}/1/q2.sock"),
    )
    assert {(b.source, b.target) for b in spec.binds if b.role == "qmp-dir"} == {
        (f"{base}/0", jail),
        (f"{base}/1", f"{jail}/run"),
    }
    assert not any(d.startswith(jail) for d in spec.own_dirs)


def test_a_pty_chardev_is_refused_at_its_key(tmp_path):
    from engine.plan import ChardevPlan, SerialPlan

    plan = dataclasses.replace(
        make_plan(str(tmp_path)), serial=SerialPlan(ChardevPlan("serial0", "pty"))
    )
    keys = {"chardev:serial0": "serial"}
    with pytest.raises(InvalidInput) as e:
        from engine.ozone.spec import build_spec

        build_spec(plan, TINY, locate=keys.get)
    [pty] = [i for i in e.value.issues if "pty" in i.message]
    assert pty.path == "serial" and "socket chardev" in pty.hint


def test_validate_uses_the_sandboxs_own_rules(tmp_path):
    """A cgroup value or numa list the sandbox cannot parse is a located validate error (it
    used to pass validation and fail in the supervisor after start)."""
    from launcher.manifest.load import load_file_full

    vm = tmp_path / "vm.toml"
    vm.write_text(
        'name = "vm"\n[boot]\nkernel = "/k"\ninitrd = "/i"\n'
        '[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\nnuma = "0-x"\n'
        'cgroup = { "cpuset.cpus" = "4-x", "memory.limit_in_bytes" = "1Q" }\n'
    )
    found = {(i.code, i.path) for i in load_file_full(str(vm)).issues if i.is_error}
    assert {
        ("ozone-cgroup", 'ozone.cgroup."cpuset.cpus"'),
        ("ozone-cgroup", 'ozone.cgroup."memory.limit_in_bytes"'),
        ("ozone-cgroup", "ozone.numa"),
    } <= found, found
    from engine.ozone import cgroup, rules

    assert caps.parse is rules.parse_caps and cgroup.parse_limits is rules.parse_limits


def test_teardown_removes_the_engines_stale_sockets_not_its_neighbours(tmp_path):
    """A socket folder the VM's uid can write is bound as it is, and may hold other VMs'
    sockets: teardown removes the engine's own stale socket, never sweeps the folder."""
    import socket

    shared = tmp_path / "vms"
    shared.mkdir()
    ours, theirs, stale = (str(shared / n) for n in ("vm1.sock", "vm2.sock", "old.sock"))
    listeners = []
    for path in (ours, theirs, stale):
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(1)
        listeners.append(s)
    listeners[0].close()  # the crashed engine's: nobody serves it now
    listeners[2].close()  # someone else's stale socket: not ours to remove either
    state = State("vm1", "stratovirt", str(tmp_path / "jail"), sockets=[ours, str(shared)])
    teardown_state(state, CgroupSet(Limits(), "stratovirt", "vm1"), check_alive=False)
    assert sorted(os.listdir(shared)) == ["old.sock", "vm2.sock"]
    listeners[1].close()

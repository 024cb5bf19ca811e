"""engine.ownfiles: a socket or pidfile is made only where nothing live is, with its own mode
whatever the umask, and removed only while the path still names it (issue 13, findings 1, 20)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from engine.errors import HostError
from engine.ownfiles import (
    create_exclusive,
    listen_unix,
    listener_pid,
    plan_made_paths,
    unlink_if_same,
)


def test_a_socket_gets_0600_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        sock, made = listen_unix(str(tmp_path / "s.sock"), "chardev c")
    finally:
        os.umask(old)
    st = os.lstat(tmp_path / "s.sock")
    assert stat.S_IMODE(st.st_mode) == 0o600 and made == (st.st_dev, st.st_ino, st.st_ctime_ns)
    sock.close()


def test_a_live_socket_is_refused_naming_its_process(tmp_path):
    path = str(tmp_path / "s.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    assert listener_pid(path) == os.getpid()
    with pytest.raises(HostError, match=f"in use by process {os.getpid()}"):
        listen_unix(path, "chardev c")
    other.close()
    assert listener_pid(path) is None  # stale now: the next bind replaces it
    sock, _ = listen_unix(path, "chardev c")
    sock.close()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_what_is_not_a_socket_is_never_replaced(tmp_path, kind):
    path = tmp_path / "s.sock"
    {"file": lambda: path.write_text("x"), "dir": path.mkdir,
     "symlink": lambda: path.symlink_to(tmp_path)}[kind]()  # fmt: skip
    with pytest.raises(HostError, match="refusing to replace it"):
        listen_unix(str(path), "chardev c")
    assert os.path.lexists(path)


def test_only_the_inode_made_is_unlinked(tmp_path):
    path = str(tmp_path / "vm.pid")
    made = create_exclusive(path, b"1\n", 0o644, "pidfile")
    with pytest.raises(HostError, match="already exists"):
        create_exclusive(path, b"2\n", 0o644, "pidfile")
    os.unlink(path)
    with open(path, "w") as f:
        f.write("someone else's\n")
    assert not unlink_if_same(path, made) and os.path.exists(path)
    os.unlink(path)
    made = create_exclusive(path, b"1\n", 0o644, "pidfile")
    assert unlink_if_same(path, made) and not os.path.exists(path)


def test_a_pidfile_is_never_made_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    (tmp_path / "vm.pid").symlink_to(target)
    with pytest.raises(HostError):
        create_exclusive(str(tmp_path / "vm.pid"), b"1\n", 0o644, "pidfile")
    assert not target.exists()


def test_plan_made_paths_lists_what_two_vms_must_not_share(tmp_path):
    import dataclasses

    from ozone_plans import make_plan

    from engine.plan import ChardevPlan, HostFile, SerialPlan

    plan = make_plan(str(tmp_path))
    plan = dataclasses.replace(
        plan,
        serial=SerialPlan(ChardevPlan("s", "socket", f"{tmp_path}/con.sock", True, True)),
        chardevs=(ChardevPlan("f", "file", f"{tmp_path}/log.txt"),
                  ChardevPlan("c", "socket", f"{tmp_path}/client.sock")),
        pidfile=f"{tmp_path}/vm.pid",
        host_files=(*plan.host_files, HostFile(f"{tmp_path}/ro.img", "drive", False)),
    )  # fmt: skip
    assert plan_made_paths(plan) == [
        (f"{tmp_path}/run/qmp.sock", "socket"),
        (f"{tmp_path}/log.txt", "file"),
        (f"{tmp_path}/con.sock", "socket"),
        (f"{tmp_path}/vm.pid", "file"),
        (f"{tmp_path}/disk.img", "drive"),
    ]

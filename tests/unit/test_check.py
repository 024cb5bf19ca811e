"""svlaunch check: host probes against a temporary host tree (and the real CLI once)."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

from launcher import model as m
from launcher.cli import main
from launcher.validate.host import Host, check_host


def make_host(tmp_path, kvm: bool = True, nodes: tuple[int, ...] = (0,), hugetlbfs: bool = True):
    dev, sys_, proc = tmp_path / "dev", tmp_path / "sys", tmp_path / "proc"
    (dev / "net").mkdir(parents=True, exist_ok=True)
    if kvm:
        (dev / "kvm").write_text("")
    elif (dev / "kvm").exists():
        os.unlink(dev / "kvm")
    (dev / "net" / "tun").write_text("")
    for n in nodes:
        (sys_ / "devices/system/node" / f"node{n}").mkdir(parents=True, exist_ok=True)
    (sys_ / "class/net/tap-up").mkdir(parents=True, exist_ok=True)
    proc.mkdir(exist_ok=True)
    fs = "hugetlbfs" if hugetlbfs else "tmpfs"
    (proc / "mounts").write_text(f"none {tmp_path}/huge {fs} rw 0 0\n")
    return Host(str(dev), str(sys_), str(proc), is_root=False)


def base(tmp_path) -> m.Manifest:
    for f in ("vmlinux", "initrd", "root.img"):
        (tmp_path / f).write_bytes(b"x" * 16)
    (tmp_path / "run").mkdir(exist_ok=True)
    return m.Manifest(
        name="vm",
        boot=m.Boot(str(tmp_path / "vmlinux"), str(tmp_path / "initrd")),
        drives=(m.Drive("root", str(tmp_path / "root.img")),),
        qmp=(str(tmp_path / "run" / "vm.qmp"),),
    )


def codes(issues) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in issues]


def test_ready_host(tmp_path) -> None:
    assert check_host(base(tmp_path), make_host(tmp_path)) == []


def test_missing_files_and_kvm(tmp_path) -> None:
    man = base(tmp_path)
    os.unlink(tmp_path / "initrd")
    issues = check_host(man, make_host(tmp_path, kvm=False))
    assert ("host-kvm", "machine") in codes(issues)
    assert ("host-file", "boot.initrd") in codes(issues)


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` made unwritable for this user: mode 0444, and for root (whom modes do not stop)
    the immutable attribute, which refuses writes to root too (access(2): EPERM)."""
    os.chmod(path, 0o444)
    if os.geteuid() != 0:
        yield
        return
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_image_needs_only_read(tmp_path) -> None:
    man = base(tmp_path)
    with unwritable(tmp_path / "root.img"):
        assert not os.access(tmp_path / "root.img", os.W_OK)
        issues = check_host(man, make_host(tmp_path))
        assert codes(issues) == [("host-file", "drives.root.file")]
        assert "cannot open" in issues[0].message and "to read and write" in issues[0].message
        ro = replace(man, drives=(replace(man.drives[0], readonly=True),))
        assert check_host(ro, make_host(tmp_path)) == []


def test_a_folder_where_a_file_is_expected(tmp_path) -> None:
    man = base(tmp_path)
    (tmp_path / "kernel-dir").mkdir()
    man = replace(man, boot=replace(man.boot, kernel=str(tmp_path / "kernel-dir")))
    issues = check_host(man, make_host(tmp_path))
    assert codes(issues) == [("host-file", "boot.kernel")]
    assert "is a directory, not a regular file" in issues[0].message


def test_tap_missing_without_root(tmp_path) -> None:
    man = replace(
        base(tmp_path), nets=(m.Net("n0", ifname="tap-new"), m.Net("n1", ifname="tap-up"))
    )
    assert codes(check_host(man, make_host(tmp_path))) == [("host-tap", "nets.n0.ifname")]
    root = replace(make_host(tmp_path), is_root=True)
    assert check_host(man, root) == []


def test_hugetlbfs_and_numa(tmp_path) -> None:
    (tmp_path / "huge").mkdir(exist_ok=True)
    node = m.NumaNode(0, (0,), 256 << 20, (1,), m.NumaPolicy.BIND)
    man = replace(
        base(tmp_path), memory=m.Memory(path=str(tmp_path / "huge")), numa=m.Numa((node,))
    )
    issues = check_host(man, make_host(tmp_path, hugetlbfs=False))
    assert ("host-hugetlbfs", "memory.path") in codes(issues)
    assert ("host-numa", "numa.nodes[0].host-nodes") in codes(issues)
    assert check_host(replace(man, numa=m.Numa()), make_host(tmp_path)) == []


def test_vhost_devices(tmp_path) -> None:
    man = replace(
        base(tmp_path), vsock=m.Vsock(3, "v"), nets=(m.Net("n", ifname="tap-up", vhost=True),)
    )
    got = codes(check_host(man, make_host(tmp_path)))
    assert ("host-vhost", "vsock") in got and ("host-vhost", "nets.n.vhost") in got
    man = replace(
        man,
        vsock=m.Vsock(3, "v", vhostfd=5),
        nets=(m.Net("n", ifname="tap-up", vhost=True, vhostfds=(6,)),),
    )
    assert check_host(man, make_host(tmp_path)) == []


def test_stale_socket_and_missing_folder(tmp_path) -> None:
    man = base(tmp_path)
    (tmp_path / "run" / "vm.qmp").write_text("")
    assert codes(check_host(man, make_host(tmp_path))) == [("host-socket", "qmp")]
    man = replace(man, qmp=(str(tmp_path / "nope" / "vm.qmp"),))
    assert codes(check_host(man, make_host(tmp_path))) == [("host-socket", "qmp")]


def test_cli_locates_host_issues(tmp_path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text('name = "vm"\nqmp = "run/vm.qmp"\n[boot]\nkernel = "nope"\ninitrd = "nope2"\n')
    (tmp_path / "run").mkdir()
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(["check", str(path)])
    assert rc == 1
    assert f"{path}:4:10: error[host-file]" in err.getvalue()
    assert "host cannot run it" in out.getvalue()


def test_the_stratovirt_binary_matters_only_for_the_stratovirt_target(tmp_path) -> None:
    man = replace(base(tmp_path), ozone=m.Ozone(str(tmp_path / "no-stratovirt"), 1000, 1000))
    host = make_host(tmp_path)
    assert ("host-file", "ozone.exec-file") not in codes(check_host(man, host))
    assert ("host-file", "ozone.exec-file") in codes(check_host(man, host, target="stratovirt"))


def test_a_file_the_sandbox_uid_cannot_read(tmp_path) -> None:
    """With [ozone], the engine opens the VM's files as the sandbox's uid, not as this user:
    an image only its owner may read is refused for that uid (a real denial, root or not)."""
    uid = os.geteuid() + 1000
    man = replace(base(tmp_path), ozone=m.Ozone(str(tmp_path / "stratovirt"), uid, uid))
    os.chmod(tmp_path / "root.img", 0o600)
    issues = [i for i in check_host(man, make_host(tmp_path)) if i.path == "drives.root.file"]
    assert [i.code for i in issues] == ["host-sandbox"], issues
    assert f"uid {uid} (gid {uid}) cannot read and write" in issues[0].message
    os.chmod(tmp_path / "root.img", 0o666)
    issues = [i for i in check_host(man, make_host(tmp_path)) if i.path == "drives.root.file"]
    assert issues == []

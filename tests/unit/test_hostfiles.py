"""The one host-file check (issue 13 item 10): what a VM may open, on every path that opens one.

Real files of every kind the kernel has: a FIFO (opening one for reading blocks until a writer
comes), a unix socket, a character device, procfs and sysfs files, symlinks, folders.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from engine.errors import HostError
from engine.hostfiles import HostFileError, check_host_file, open_host_file
from launcher import model as m
from launcher.validate.host import Host, check_host


def in_thread(fn, timeout: float = 5.0):
    """Run ``fn`` and fail (not hang) if it blocks: the FIFO case would block forever."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(_call(fn)), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the check blocked"
    return out[0]


def _call(fn):
    try:
        return fn()
    except Exception as e:
        return e


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    img = tmp_path / "disk.img"
    img.write_bytes(b"\0" * 4096)
    fifo = tmp_path / "fifo.img"
    os.mkfifo(fifo)
    sock = tmp_path / "sock.img"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    link = tmp_path / "link.img"
    link.symlink_to(img)
    fifo_link = tmp_path / "by-id-fifo"
    fifo_link.symlink_to(fifo)
    return {
        "fifo_link": str(fifo_link),
        "img": str(img),
        "fifo": str(fifo),
        "sock": str(sock),
        "link": str(link),
        "dir": str(tmp_path),
    }


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("fifo", "a FIFO (named pipe), not a regular file or a block device"),
        ("sock", "a unix socket"),
        ("fifo_link", "-> " + "{tmp}/fifo.img is a FIFO (named pipe)"),
        ("dir", "a directory"),
    ],
)
def test_what_is_not_an_image_is_refused_without_blocking(files, key: str, words: str) -> None:
    problem = in_thread(lambda: check_host_file(files[key], what="drive image", write=True))
    words = words.format(tmp=os.path.dirname(files["img"]))
    assert problem is not None and words in problem.message and problem.hint
    assert files[key] in problem.message


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/proc/self/mem", "procfs, a kernel pseudo file system"),
        ("/proc/self/environ", "procfs"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "sysfs"),
        ("/dev/zero", "a character device"),
        ("/dev/null", "a character device"),
    ],
)
def test_kernel_files_that_look_like_files_are_refused(path: str, words: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} is not on this host")
    problem = in_thread(lambda: check_host_file(path, what="drive image"))
    assert problem is not None and words in problem.message


def test_a_regular_file_opens_blocking_and_close_on_exec(files) -> None:
    fd = open_host_file(files["img"], what="drive image", write=True)
    try:
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
        assert os.fstat(fd).st_ino == os.stat(files["img"]).st_ino
        assert os.fstat(fd).st_mode & stat.S_IFREG
    finally:
        os.close(fd)
    assert check_host_file(files["img"], what="kernel", block_ok=False) is None


def test_a_link_the_manifest_names_opens_its_target(files) -> None:
    """/dev/disk/by-id/... style links are how operators name disks: the target is checked."""
    fd = open_host_file(files["link"], what="drive image", write=True)
    try:
        assert os.fstat(fd).st_ino == os.stat(files["img"]).st_ino
    finally:
        os.close(fd)


def test_a_missing_file_and_a_read_only_need(files, tmp_path) -> None:
    problem = check_host_file(str(tmp_path / "nope"), what="initrd")
    assert problem is not None and "No such file" in problem.message
    with pytest.raises(HostFileError) as e:
        open_host_file("bad\0path", what="kernel")
    assert isinstance(e.value, HostError) and "NUL" in e.value.message


def test_check_and_up_refuse_what_hot_plug_refuses(files, tmp_path) -> None:
    """``svlaunch check``/``up`` run the same function: /proc/self/mem passed them before."""
    for f in ("vmlinux", "initrd"):
        (tmp_path / f).write_bytes(b"x" * 16)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kvm").write_text("")
    man = m.Manifest(
        name="vm",
        boot=m.Boot(str(tmp_path / "vmlinux"), str(tmp_path / "initrd")),
        drives=(
            m.Drive("mem", "/proc/self/mem"),
            m.Drive("pipe", files["fifo"]),
            m.Drive("ok", files["img"]),
        ),
    )
    host = Host(str(tmp_path / "dev"), str(tmp_path / "sys"), str(tmp_path / "proc"), False)
    issues = {i.path: i for i in in_thread(lambda: check_host(man, host)) if i.code == "host-file"}
    assert set(issues) == {"drives.mem.file", "drives.pipe.file"}
    assert "procfs" in issues["drives.mem.file"].message
    assert "FIFO" in issues["drives.pipe.file"].message


def test_a_kernel_must_be_a_regular_file() -> None:
    problem = check_host_file("/dev/zero", what="kernel", block_ok=False)
    assert problem is not None and problem.message.endswith("not a regular file")

"""A drive's ``aio`` this host cannot give is refused with the reason, and host I/O errors are
logged in the operator's terms while the guest gets IOERR.

Real refusals, not simulated ones: a child process installs a seccomp filter that fails
``io_uring_setup`` (or ``io_setup``) with EPERM, as container runtimes do, then asks the
engine's probe, the device and ``svlaunch check``. The sysctl wording is checked on a /proc tree
of the test's own (``explain``'s ``proc``), since the test cannot flip the host's sysctls.
A real host I/O error: RLIMIT_FSIZE makes the kernel fail writes past it with EFBIG.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.io.probe import explain

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"


def child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    paths = [str(ROOT), str(SUPPORT), str(ROOT / "tests" / "unit")]
    prelude = f"import sys\nsys.path[:0] = {paths!r}\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def proc_tree(tmp_path: Path, values: dict[str, str]) -> str:
    """A /proc holding the given ``sys/...`` files (``{"kernel/io_uring_disabled": "2"}``)."""
    for name, value in values.items():
        f = tmp_path / "sys" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value + "\n")
    return str(tmp_path)


def test_io_uring_refusals_name_the_sysctl_or_seccomp(tmp_path: Path) -> None:
    eperm = OSError(errno.EPERM, "Operation not permitted")
    p = explain("io_uring", eperm, proc_tree(tmp_path / "a", {"kernel/io_uring_disabled": "2"}))
    assert "kernel.io_uring_disabled = 2" in p.message and "io_uring_disabled=0" in p.hint
    sysctls = {"kernel/io_uring_disabled": "1", "kernel/io_uring_group": "990"}
    p = explain("io_uring", eperm, proc_tree(tmp_path / "b", sysctls))
    assert "group id 990" in p.message
    p = explain("io_uring", eperm, proc_tree(tmp_path / "c", {"kernel/io_uring_disabled": "0"}))
    assert "seccomp" in p.message and 'aio = "native"' in p.hint
    p = explain("io_uring", OSError(errno.ENOSYS, "x"), str(tmp_path))
    assert "CONFIG_IO_URING" in p.message


def test_native_aio_refusals_name_the_limit(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, {"fs/aio-nr": "65536", "fs/aio-max-nr": "65536"})
    p = explain("native", OSError(errno.EAGAIN, "x"), proc)
    assert "fs.aio-nr is 65536 of fs.aio-max-nr 65536" in p.message and "sysctl" in p.hint
    p = explain("native", OSError(errno.ENOSYS, "x"), proc)
    assert "CONFIG_AIO" in p.message


SECCOMP_DENY = """
import pyseccomp as sc, errno
f = sc.SyscallFilter(sc.ALLOW)
for name in {names!r}:
    f.add_rule(sc.ERRNO(errno.EPERM), name)
f.load()
"""


@pytest.mark.parametrize(
    ("aio", "syscall"), [("io_uring", "io_uring_setup"), ("native", "io_setup")]
)
def test_a_seccomp_blocked_aio_is_refused_by_check_and_by_the_device(
    tmp_path, aio, syscall
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    manifest = tmp_path / "vm.toml"
    manifest.write_text(
        f'name = "aio-check"\nqmp = "{tmp_path}/q.sock"\n[boot]\nkernel = "{disk}"\n'
        f'[drives.d0]\nfile = "{disk}"\ndirect = true\naio = "{aio}"\n'
    )
    res = child(
        SECCOMP_DENY.format(names=[syscall])
        + f"""
from engine.io.probe import check_drive
from engine.errors import HostError
from engine.virtio.blk import Blk
key, p = check_drive({str(disk)!r}, what="drive image", aio={aio!r}, direct=True, write=True)
print("PROBE", key, p.message, "HINT", p.hint)
try:
    Blk("d0", {str(disk)!r}, direct=True, aio={aio!r})
except HostError as e:
    print("DEVICE", e, "HINT", e.hint)
from launcher.cli import main
print("CHECK-RC", main(["check", {str(manifest)!r}]))
"""
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "PROBE aio" in out and "seccomp" in out.split("PROBE", 1)[1].split("HINT")[0], out
    assert f"virtio-blk d0: aio {aio!r} is not available" in out and "seccomp" in out
    assert "CHECK-RC 1" in out and "drives.d0" in out and "seccomp" in out.split("CHECK-RC")[0]


def test_a_host_write_error_is_logged_in_the_operators_terms_and_the_guest_gets_ioerr(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    res = child(
        f"""
import logging, resource, signal
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # writes past 1 MiB: EFBIG
from pathlib import Path
from test_virtio_blk import Rig, BS
for aio in ("off", "io_uring"):
    r = Rig(Path({str(disk)!r}), aio=aio)
    ok = r.request(BS.VIRTIO_BLK_T_OUT, 8, out=b"a" * 4096)[0]
    bad = [r.request(BS.VIRTIO_BLK_T_OUT, 4096, out=b"b" * 4096)[0] for _ in range(20)]
    print("STATUS", aio, ok, set(bad), r.dev.errors.count, flush=True)
    r.close()
"""
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "STATUS off 0 {1} 20" in res.stdout and "STATUS io_uring 0 {1} 20" in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if "failed" in ln]
    assert len(lines) == 2, res.stderr  # one line per drive: the 19 repeats are counted, not logged
    for line in lines:
        assert line.startswith(
            f"WARNING blk0: writing 4096 bytes at byte 2097152 of {disk} failed: File too large "
            "(EFBIG); the guest gets an I/O error. hint: the write would grow the image past "
            "the file system's file size limit"
        ), line


def test_repeated_errors_are_counted_then_summarised(monkeypatch) -> None:
    from engine.virtio import blk_errors

    logged: list[str] = []

    class Log:
        def warning(self, fmt: str, *args: object) -> None:
            logged.append(fmt % args)

    monkeypatch.setattr(blk_errors, "log", Log())
    clock = [100.0]
    monkeypatch.setattr(blk_errors.time, "monotonic", lambda: clock[0])
    e = blk_errors.ErrorLog("d0", "/img")
    for _ in range(5):
        e.report(1, 0, 512, errno.EIO)
    assert len(logged) == 1 and e.count == 5
    clock[0] += blk_errors.QUIET_S + 1
    e.report(1, 0, 512, errno.EIO)
    assert len(logged) == 2 and "(4 more I/O errors since the last report)" in logged[1]
    e.report(0, 0, 512, errno.ENOSPC)  # another kind: logged at once
    assert len(logged) == 3 and "reading 512 bytes at byte 0 of /img" in logged[2]
    assert os.strerror(errno.ENOSPC) in logged[2] and "full" in logged[2]

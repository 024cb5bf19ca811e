"""A folder on a file system that takes O_DIRECT, for tests of direct I/O against real files.

tmpfs (a common /tmp) refuses O_DIRECT, so: the test's own tmp_path when its file system takes
O_DIRECT; else a fresh folder under /var/tmp when that one does; else, as root, an ext4 image
loop-mounted under tmp_path (unmounted at the end). Without any of them the test is skipped on a
developer's machine and fails in CI (``CI=true``), which runs as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def takes_o_direct(folder: Path) -> bool:
    probe = folder / ".o_direct_probe"
    try:
        probe.write_bytes(b"\0" * 4096)
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    os.close(fd)
    return True


@contextlib.contextmanager
def direct_folder(tmp_path: Path) -> Iterator[Path]:
    import pytest

    if takes_o_direct(tmp_path):
        yield tmp_path
        return
    if os.path.isdir("/var/tmp") and takes_o_direct(Path("/var/tmp")):
        folder = Path(tempfile.mkdtemp(prefix="svlaunch-direct-", dir="/var/tmp"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if os.geteuid() == 0 and shutil.which("mke2fs"):
        image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
        mnt.mkdir()
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-F", str(image), "64M"], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        return
    if os.environ.get("CI") == "true":
        pytest.fail("no file system here takes O_DIRECT (CI runs as root: loop-mount failed?)")
    pytest.skip("no file system here takes O_DIRECT (tmpfs /tmp, not root)")

"""One VM's runtime folder, ``<root>/<name>/``, as an object: its paths, reading and writing
its state files (atomically, never through a symlink), what it recorded, whether its engine
lives, and removing it.

Split from ``launcher/runtime.py``, which keeps the decisions over the whole root: claiming a
name (the root lock, the ``lock`` flock, the held paths), finding a running VM and listing them.
The layout and the rules are in ``runtime.py``'s docstring and docs/lifecycle.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.errors import HostError
from launcher.identity import pid_alive
from launcher.runtime_record import Made, Meta, Record
from launcher.runtime_root import FILE_MODE, open_dir, open_root

MAX_STATE_BYTES = 1 << 20  # meta.json / record.json larger than this are not svlaunch's
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: scratch names of the atomic writes; a crash may leave them
SCRATCH = (".meta.json.tmp", ".record.json.tmp", ".gitops.json.tmp")
#: ``<root>/<name>.last.exit.json``: the exit record of a VM that has gone
LAST_EXIT = ".last.exit.json"


def read_at(d: int, name: str) -> bytes | None:
    """A regular file ``name`` of the open folder ``d`` (at most ``MAX_STATE_BYTES``; never
    through a symlink, never blocking on a FIFO), or None."""
    try:
        fd = os.open(name, _READ, dir_fd=d)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_STATE_BYTES + 1)[:MAX_STATE_BYTES]
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- one VM's folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VmDir:
    name: str
    path: Path

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    @property
    def pid_file(self) -> Path:
        return self.path / "pid"

    @property
    def meta_file(self) -> Path:
        return self.path / "meta.json"

    @property
    def record_file(self) -> Path:
        return self.path / "record.json"

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.path / "serial.sock"

    @property
    def log_file(self) -> Path:
        return self.path / "engine.log"

    @property
    def exit_file(self) -> Path:
        """How the engine ended (``engine.ending``, docs/lifecycle.md): nobody may be waiting
        for it (a detached or pool-forked engine), so it writes this itself (its sandbox
        supervisor does, for a sandboxed VM)."""
        return self.path / "exit.json"

    def exit_record(self) -> dict[str, Any] | None:
        """``exit.json`` once written (None while the engine runs, or if it died unrecorded)."""
        data = self._json("exit.json")
        return data if isinstance(data, dict) else None

    @property
    def last_log(self) -> Path:
        """Where the engine log of the last run is kept after the VM is gone."""
        return self.path.parent / f"{self.name}.last.log"

    @property
    def last_exit(self) -> Path:
        """Where the exit record of the last run is kept after the VM is gone
        (``launcher.runtime_ended``)."""
        return self.path.parent / f"{self.name}{LAST_EXIT}"

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        """The VM folder's descriptor, after checking root and folder (no symlink, ours, 0700)."""
        root = open_root(create=False)
        if root is None:
            raise FileNotFoundError(errno.ENOENT, "no runtime folder", str(self.path))
        try:
            fd = open_dir(self.name, "runtime entry", dir_fd=root, shown=self.path)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- files in the folder (never through a symlink) ----------------------------------------

    def read(self, name: str) -> bytes | None:
        """A regular file of the folder (at most ``MAX_STATE_BYTES``), or None."""
        try:
            with self.opened() as d:
                return read_at(d, name)
        except OSError:
            return None

    def _json(self, name: str) -> Any:
        raw = self.read(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def meta(self) -> Meta | None:
        return Meta.from_json(self._json("meta.json"))

    def record(self) -> Record | None:
        return Record.from_json(self._json("record.json"))

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A failed write in the folder (full, read-only, gone) is the host's problem to name."""
        try:
            yield
        except OSError as exc:
            raise HostError(
                f"cannot write {self.path / name}: {exc.strerror or exc}",
                hint="check the runtime folder's file system (full? read-only?)",
            ) from None

    def _replace(self, d: int, name: str, data: bytes) -> tuple[int, int]:
        """Write ``name`` atomically (scratch file, fsync, rename); its new identity."""
        tmp = f".{name}.tmp"
        with self._writing(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=d)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, FILE_MODE, dir_fd=d)
            try:
                os.fchmod(fd, FILE_MODE)
                _write_all(fd, data)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
        return (st.st_dev, st.st_ino)

    def write_record(self, record: Record) -> None:
        with self.opened() as d:
            self._replace(d, "record.json", json.dumps(record.to_json(), indent=1).encode())

    def note(self, *items: Made) -> None:
        """Add what was just made to the record."""
        record = self.record() or Record(self.name)
        for item in items:
            record.add(item)
        self.write_record(record)

    def write_meta(self, meta: Meta) -> None:
        with self.opened() as d:
            ident = self._replace(d, "meta.json", json.dumps(asdict(meta), indent=2).encode())
            pid = self._replace(d, "pid", f"{meta.pid}\n".encode())
        self.note(
            Made("meta.json", "file", "svlaunch", ident), Made("pid", "file", "svlaunch", pid)
        )

    def write_file(self, name: str, data: bytes) -> None:
        """Write (or replace) a file of the folder atomically, recorded for clean-up (the
        GitOps record, ``launcher.gitops.state``)."""
        with self.opened() as d:
            ident = self._replace(d, name, data)
        self.note(Made(name, "file", "svlaunch", ident))

    def create(self, name: str, data: bytes = b"", mode: int = FILE_MODE) -> int:
        """Make a new file of the folder (``O_EXCL``: never an existing one), recorded; its
        descriptor, open for writing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._writing(name), self.opened() as d:
            fd = os.open(name, flags, mode, dir_fd=d)
            try:
                os.fchmod(fd, mode)
                _write_all(fd, data)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
        self.note(Made(name, "file", "svlaunch", (st.st_dev, st.st_ino)))
        return fd

    def lock_held(self) -> bool:
        """True while some process (the engine) holds the VM's lock."""
        try:
            with self.opened() as d:
                fd = os.open("lock", _READ, dir_fd=d)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
        return False

    def alive(self) -> bool:
        if self.lock_held():
            return True
        meta = self.meta()
        return meta is not None and pid_alive(meta.pid, meta.pid_start)

    # -- clean-up ------------------------------------------------------------------------------

    def remove(self) -> None:
        """Delete what the record lists (each only if the path is still that file), keeping the
        engine log as ``<name>.last.log``; then the folder, if nothing else is left in it.

        A sandboxed VM whose supervisor died (SIGKILL, OOM) leaves its jail, mounts and
        cgroups behind; they are torn down here, like ozone's ``-clean-resource``.
        """
        from launcher.runtime_clean import remove_vm

        remove_vm(self)

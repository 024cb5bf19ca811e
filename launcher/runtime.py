"""Per-VM runtime state: one folder per VM, what svlaunch made for it, and the paths it holds.

Layout of ``<root>/<name>/`` (0700): ``lock`` (held by the engine while it lives),
``record.json`` (every file made for this VM and every host path it holds), ``plan.json``,
``meta.json`` (what ``ps`` shows), ``pid``, ``qmp.sock`` (when the manifest names no QMP
socket), ``serial.sock`` (a detached VM's console), ``engine.log``, ``exit.json`` (how the
engine ended). docs/lifecycle.md gives the records' formats and the rules below; a gone VM
leaves ``<name>.last.log`` and ``<name>.last.exit.json`` in the root.

The root and which folders are trusted: ``launcher/runtime_root.py``; ``meta.json`` and
``record.json``: ``launcher/runtime_record.py``; clean-up: ``launcher/runtime_clean.py``.

Nothing here follows a symlink: the root and each VM folder are opened with ``O_NOFOLLOW`` and
checked (owner, mode), and files in a VM folder are opened relative to its descriptor. Clean-up
removes only what ``record.json`` lists, and only while the path is still the file recorded.

Liveness does not trust pids alone (they are reused): ``up`` takes an exclusive ``flock`` on
``lock`` and hands that descriptor to the engine process, so the lock is held exactly as long as
the engine lives. The pid plus its start time is the fallback when a sandbox closed inherited
descriptors; signals go through ``launcher.identity``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.names import VM_NAME_HINT, is_vm_name
from launcher.errors import HostError, UsageError
from launcher.identity import pid_alive, process_start_time  # noqa: F401  (re-exported)
from launcher.runtime_record import Made, Meta, Record, kind_of  # noqa: F401  (re-exported)
from launcher.runtime_root import (  # noqa: F401  (re-exported)
    DIR_MODE,
    FILE_MODE,
    LOG_MODE,
    RUNTIME_ENV,
    create_or_open,
    open_dir,
    open_root,
    root_locked,
    runtime_root,
    trust,
)

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


def check_name(name: str) -> str:
    if not is_vm_name(name):
        raise UsageError(f"invalid VM name {name!r}", hint=VM_NAME_HINT)
    return name


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


# -- claim, find, list ----------------------------------------------------------------------------


@dataclass
class Claim:
    """A freshly claimed VM directory; ``lock_fd`` must be passed to the engine process."""

    vm: VmDir
    lock_fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def vm_dir(name: str) -> VmDir:
    """The folder VM ``name`` has or would have (nothing is opened or made)."""
    check_name(name)
    return VmDir(name, runtime_root() / name)


def claim(name: str, holds: list[tuple[str, str]] | None = None) -> Claim:
    """Take ``name`` for a new VM and the host paths in ``holds`` (``plan_made_paths``): refused
    if a VM of that name runs, or if another VM holds one of the paths or something live sits
    there. Stale state of a dead engine is cleaned first."""
    from launcher.runtime_clean import check_holds, clean_for_claim

    vm = vm_dir(name)
    root = open_root(create=True)
    assert root is not None
    try:
        with root_locked(root):
            try:
                os.mkdir(name, DIR_MODE, dir_fd=root)
                made = True
            except FileExistsError:
                made = False
            except OSError as exc:
                raise HostError(
                    f"cannot create the runtime folder {vm.path}: {exc.strerror}",
                    hint=f"check {vm.path.parent} (or set {RUNTIME_ENV} to a folder you can write)",
                ) from None
            d = open_dir(name, "runtime entry", dir_fd=root, shown=vm.path)
            try:
                if made:
                    os.fchmod(d, DIR_MODE)
                fd = _take_lock(vm, d)
                st = os.fstat(fd)
                lock = Made("lock", "file", "svlaunch", (st.st_dev, st.st_ino))
                try:
                    clean_for_claim(vm)
                    check_holds(vm, holds or [], root)
                    vm.write_record(Record(name, [lock], list(holds or [])))
                except BaseException:
                    os.close(fd)
                    if not made:  # the folder was there: record the lock, for a later clean-up
                        with contextlib.suppress(OSError, HostError):
                            vm.write_record(Record(name, [lock]))
                    else:  # a refused claim leaves nothing behind
                        with contextlib.suppress(OSError):
                            os.unlink("record.json", dir_fd=d)
                        with contextlib.suppress(OSError):
                            os.unlink("lock", dir_fd=d)
                        with contextlib.suppress(OSError):
                            os.rmdir(name, dir_fd=root)
                    raise
            finally:
                os.close(d)
    finally:
        os.close(root)
    return Claim(vm, fd)


def change_holds(
    name: str, add: list[tuple[str, str]], drop: list[tuple[str, str]] | None = None
) -> None:
    """Take ``add`` for the running VM ``name`` (refused, like a claim, when another running VM
    holds one) and let go of ``drop``: a device hot-replaced over QMP changes what it holds."""
    from launcher.runtime_clean import check_holds

    vm = find(name)
    root = open_root(create=False)
    if root is None:
        raise HostError(f"the runtime folder {runtime_root()} is gone")
    try:
        with root_locked(root):
            check_holds(vm, add, root)
            record = vm.record() or Record(name)
            kept = [h for h in record.holds if h not in (drop or [])]
            record.holds = kept + [h for h in add if h not in kept]
            vm.write_record(record)
    finally:
        os.close(root)


def _take_lock(vm: VmDir, d: int) -> int:
    try:
        fd = create_or_open("lock", d, os.O_RDWR)
    except OSError as exc:
        raise HostError(f"cannot create {vm.lock_file}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        meta = vm.meta()
        pid = f" (pid {meta.pid})" if meta else ""
        raise HostError(
            f"a VM named {vm.name!r} is already running{pid}",
            hint=f"stop it with 'svlaunch down {vm.name}' or give this VM another name",
        ) from None
    meta = vm.meta()
    if meta is not None and pid_alive(meta.pid, meta.pid_start):
        os.close(fd)
        raise HostError(
            f"a VM named {vm.name!r} is already running (pid {meta.pid})",
            hint=f"stop it with 'svlaunch down {vm.name}' or give this VM another name",
        )
    return fd


def find(name: str) -> VmDir:
    """The running VM ``name``; stale state is cleaned and reported as not running."""
    vm = vm_dir(name)
    try:
        with vm.opened():
            pass
    except FileNotFoundError:
        raise HostError(
            f"no VM named {name!r} is running", hint="'svlaunch ps' lists VMs"
        ) from None
    except OSError as exc:
        raise HostError(f"runtime folder {vm.path}: {exc.strerror}") from None
    if not vm.alive():
        vm.remove()
        raise HostError(
            f"VM {name!r} is not running (its engine died; stale state cleaned)",
            hint="look at its log, or start it again with 'svlaunch up'",
        )
    return vm


def all_vms(clean: bool = True) -> list[VmDir]:
    """Every live VM; with ``clean``, folders left by dead engines are removed. Entries that
    are no trusted VM folder (symlinks, other users' folders, files) are skipped."""
    root = open_root(create=False)
    if root is None:
        return []
    out = []
    try:
        names = sorted(os.listdir(root))
        for name in names:
            if not is_vm_name(name):
                continue
            try:
                st = os.lstat(name, dir_fd=root)
                trust(st, name, "runtime entry")
            except (OSError, HostError):
                continue
            vm = VmDir(name, runtime_root() / name)
            if vm.alive():
                out.append(vm)
            elif clean and vm.record() is not None:
                vm.remove()
    finally:
        os.close(root)
    return out


def uptime_text(started: float, now: float | None = None) -> str:
    secs = max(0, int((now or time.time()) - started))
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}:{m:02d}:{s:02d}"

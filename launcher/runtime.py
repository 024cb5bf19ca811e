"""Per-VM runtime state: one folder per VM, what svlaunch made for it, and the paths it holds.

Layout of ``<root>/<name>/`` (0700): ``lock`` (held by the engine while it lives),
``record.json`` (every file made for this VM and every host path it holds), ``plan.json``,
``meta.json`` (what ``ps`` shows), ``pid``, ``qmp.sock`` (when the manifest names no QMP
socket), ``serial.sock`` (a detached VM's console), ``engine.log``. docs/lifecycle.md gives the
record's format and the rules below.

Root: ``$SVLAUNCH_RUNTIME_DIR`` if set (tests), else ``/run/svlaunch`` as root, else
``$XDG_RUNTIME_DIR/svlaunch``, else ``/tmp/svlaunch-<uid>``. A root (and XDG_RUNTIME_DIR) is
trusted only when it is a folder owned by this user that nobody else can enter (no group or
other bits): a folder another user made, or could write into, is refused with the reason.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.names import VM_NAME_HINT, is_vm_name
from launcher.errors import HostError, UsageError
from launcher.identity import pid_alive, process_start_time  # noqa: F401  (re-exported)

RUNTIME_ENV = "SVLAUNCH_RUNTIME_DIR"
RECORD_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
LOG_MODE = 0o640
MAX_STATE_BYTES = 1 << 20  # meta.json / record.json larger than this are not svlaunch's
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
ROOT_LOCK = ".lock"  # a dot name is never a VM name (engine.names)
#: scratch names of the atomic writes; a crash may leave them
SCRATCH = (".meta.json.tmp", ".record.json.tmp")


def runtime_root() -> Path:
    env = os.environ.get(RUNTIME_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/svlaunch")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        _trust(_lstat_dir(Path(xdg), "XDG_RUNTIME_DIR"), Path(xdg), "XDG_RUNTIME_DIR")
        return Path(xdg) / "svlaunch"
    return Path(f"/tmp/svlaunch-{os.getuid()}")


def check_name(name: str) -> str:
    if not is_vm_name(name):
        raise UsageError(f"invalid VM name {name!r}", hint=VM_NAME_HINT)
    return name


# -- trusted folders -----------------------------------------------------------------------------


def _lstat_dir(path: Path, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise HostError(f"{what} {path}: {exc.strerror}") from None


def _trust(st: os.stat_result, path: Path | str, what: str) -> None:
    """Refuse a folder svlaunch must not trust: a symlink, not a folder, another user's, or one
    that other users can enter or write."""
    if stat.S_ISLNK(st.st_mode):
        raise HostError(
            f"{what} {path} is a symlink; svlaunch never follows one there",
            hint=f"remove it (it was not made by svlaunch), or set {RUNTIME_ENV}",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise HostError(
            f"{what} {path} is not a folder",
            hint=f"remove it (it was not made by svlaunch), or set {RUNTIME_ENV}",
        )
    if st.st_uid != os.geteuid():
        raise HostError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
            "svlaunch does not trust it",
            hint=f"remove it, or set {RUNTIME_ENV} to a folder of your own (mode 0700)",
        )
    if st.st_mode & 0o077:
        raise HostError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can reach "
            "into it; svlaunch does not trust it",
            hint=f"chmod 700 {path}",
        )


def _open_dir(
    name: str | Path, what: str, dir_fd: int | None = None, shown: Path | None = None
) -> int:
    """A descriptor of the trusted folder ``name`` (see ``_trust``), never through a symlink;
    ``shown`` is its full path, for messages."""
    shown = shown or Path(name)
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # a symlink, a file, another user's folder: say which
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except OSError:
                raise exc from None
            _trust(st, shown, what)
        raise
    try:
        _trust(os.fstat(fd), shown, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_root(create: bool) -> int | None:
    """The runtime root, trusted; None when it does not exist and ``create`` is false."""
    root = runtime_root()
    made = False
    if create:
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(root, DIR_MODE)
            made = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise HostError(
                f"cannot create the runtime folder {root}: {exc.strerror}",
                hint=f"set {RUNTIME_ENV} to a folder of your own that you can write",
            ) from None
    try:
        fd = _open_dir(root, "runtime folder")
    except FileNotFoundError:
        if create:
            raise HostError(f"the runtime folder {root} vanished while svlaunch made it") from None
        return None
    except OSError as exc:
        raise HostError(f"runtime folder {root}: {exc.strerror}") from None
    if made:
        os.fchmod(fd, DIR_MODE)  # exact, whatever the umask
    return fd


@contextlib.contextmanager
def _root_locked(root_fd: int) -> Iterator[None]:
    """Serialize claims on this host: checking other VMs' paths and recording ours is atomic."""
    fd = _create_or_open(ROOT_LOCK, root_fd, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create_or_open(name: str, dir_fd: int, access: int) -> int:
    """A regular file of ours in a trusted folder, made 0600 if missing."""
    flags = access | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise HostError(
            f"cannot write {name!r} in the runtime folder: {exc.strerror}",
            hint=f"check the runtime folder (or set {RUNTIME_ENV} to a folder you can write)",
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise HostError(f"{name} in the runtime folder is not a file of yours; remove it")
    return fd


# -- what ps/status/down know ------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """What ``ps``/``status``/``down`` need without asking the VM."""

    name: str
    pid: int  # the process svlaunch started: the engine, or the sandbox supervisor
    pid_start: int | None
    started: float  # wall clock
    qmp: str
    serial: str | None = None  # unix socket of the serial console, if any
    manifest: str = ""
    pidfile: str | None = None
    detached: bool = False
    vcpus: int = 0
    memory: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    plan: str = ""  # the plan file: the engine's command line names it (identity check)
    engine_pid: int | None = None  # the engine itself (inside a sandbox: the supervisor's child)
    engine_start: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Meta | None:
        if not isinstance(data, dict):
            return None
        known = {f.name for f in fields(cls)}
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
        ints = (meta.pid, meta.pid_start, meta.engine_pid, meta.engine_start)
        if not all(v is None or type(v) is int for v in ints) or not isinstance(meta.qmp, str):
            return None
        return meta

    @property
    def supervisor_pid(self) -> int | None:
        """The unconfined sandbox supervisor, when the engine runs in a sandbox."""
        return self.pid if self.extra.get("sandbox") else None


@dataclass(frozen=True)
class Made:
    """One thing made for a VM. ``path`` is a name in the VM folder or an absolute host path;
    ``ident`` is its (device, inode) in the folder (only svlaunch and its engine write there),
    (device, inode, change time) elsewhere (``engine.ownfiles.file_id``), or None while not yet
    seen (an engine socket, before the engine answered)."""

    path: str
    kind: str  # file | socket | link
    by: str  # svlaunch | engine
    ident: tuple[int, ...] | None = None

    def matches(self, st: os.stat_result) -> bool:
        """The path still names the file recorded."""
        now = (st.st_dev, st.st_ino, st.st_ctime_ns)
        return self.ident is not None and self.ident == now[: len(self.ident)]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "by": self.by,
                "id": list(self.ident) if self.ident else None}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Made:
        ident = d.get("id")
        return cls(str(d["path"]), str(d["kind"]), str(d["by"]),
                   tuple(int(x) for x in ident) if ident else None)  # fmt: skip


@dataclass
class Record:
    """``record.json``: what svlaunch and the engine made for the VM, and the host paths its
    engine creates or writes (``holds``: no second VM may use them while it runs)."""

    name: str
    made: list[Made] = field(default_factory=list)
    holds: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, role)

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "name": self.name, "uid": os.geteuid(),
                "made": [m.to_json() for m in self.made],
                "holds": [{"path": p, "role": r} for p, r in self.holds]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        try:
            if data["version"] != RECORD_VERSION:
                return None
            return cls(
                str(data["name"]),
                [Made.from_json(m) for m in data["made"]],
                [(str(h["path"]), str(h["role"])) for h in data["holds"]],
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def add(self, item: Made) -> None:
        self.made = [m for m in self.made if m.path != item.path] + [item]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def kind_of(st: os.stat_result) -> str:
    """The ``Made.kind`` of a file as lstat sees it."""
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "link" if stat.S_ISLNK(st.st_mode) else "file"


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
        """How a pool-forked engine ended (``engine.pool.protocol.exit_record``): nobody waits
        for it, so it writes this itself (its sandbox supervisor does, for a sandboxed VM)."""
        return self.path / "exit.json"

    def exit_record(self) -> dict[str, Any] | None:
        """``exit.json`` once written (None while the engine runs, or if it died unrecorded)."""
        data = self._json("exit.json")
        return data if isinstance(data, dict) else None

    @property
    def last_log(self) -> Path:
        """Where the engine log of the last run is kept after the VM is gone."""
        return self.path.parent / f"{self.name}.last.log"

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        """The VM folder's descriptor, after checking root and folder (no symlink, ours, 0700)."""
        root = _open_root(create=False)
        if root is None:
            raise FileNotFoundError(errno.ENOENT, "no runtime folder", str(self.path))
        try:
            fd = _open_dir(self.name, "runtime entry", dir_fd=root, shown=self.path)
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
    root = _open_root(create=True)
    assert root is not None
    try:
        with _root_locked(root):
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
            d = _open_dir(name, "runtime entry", dir_fd=root, shown=vm.path)
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


def _take_lock(vm: VmDir, d: int) -> int:
    try:
        fd = _create_or_open("lock", d, os.O_RDWR)
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
    root = _open_root(create=False)
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
                _trust(st, name, "runtime entry")
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

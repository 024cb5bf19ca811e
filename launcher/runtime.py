"""Per-VM runtime state: one directory per running VM, and how to tell live from stale.

Layout of ``<root>/<name>/``: ``lock`` (held by the engine while it lives), ``plan.json``,
``pid``, ``meta.json`` (what ``ps`` shows), ``qmp.sock`` (when the manifest names no QMP socket),
``serial.sock`` (a detached VM's console), ``engine.log``.

Root: ``$SVLAUNCH_RUNTIME_DIR`` if set (tests), else ``/run/svlaunch`` as root, else
``$XDG_RUNTIME_DIR/svlaunch``, else ``/tmp/svlaunch-<uid>``.

Liveness does not trust pids alone (they are reused): ``up`` takes an exclusive ``flock`` on
``lock`` and hands that descriptor to the engine process, so the lock is held exactly as long as
the engine lives, and a crashed engine releases it. The pid plus its start time (from
``/proc/<pid>/stat``) is the fallback when a sandbox closed inherited descriptors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.names import VM_NAME_HINT, is_vm_name
from launcher.errors import HostError, UsageError

RUNTIME_ENV = "SVLAUNCH_RUNTIME_DIR"


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def runtime_root() -> Path:
    env = os.environ.get(RUNTIME_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/svlaunch")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "svlaunch"
    return Path(f"/tmp/svlaunch-{os.getuid()}")


def check_name(name: str) -> str:
    if not is_vm_name(name):
        raise UsageError(f"invalid VM name {name!r}", hint=VM_NAME_HINT)
    return name


def process_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started (field 22 of /proc/pid/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    st = process_start_time(pid)
    if st is None:
        return False
    if start_time is not None and st != start_time:
        return False  # the pid was reused
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class Meta:
    """What ``ps``/``status``/``down`` need without asking the VM."""

    name: str
    pid: int
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
        try:
            with open(self.exit_file, "rb", opener=_nofollow) as f:
                data = json.loads(f.read(1 << 16) or b"null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def meta(self) -> Meta | None:
        try:
            data = json.loads(self.meta_file.read_text())
            return Meta(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write_meta(self, meta: Meta) -> None:
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(meta), indent=2))
        os.replace(tmp, self.meta_file)
        self.pid_file.write_text(f"{meta.pid}\n")

    def lock_held(self) -> bool:
        """True while some process (the engine) holds the VM's lock."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def alive(self) -> bool:
        if self.lock_held():
            return True
        meta = self.meta()
        return meta is not None and pid_alive(meta.pid, meta.pid_start)

    @property
    def last_log(self) -> Path:
        """Where the engine log of the last run is kept after the VM is gone."""
        return self.path.parent / f"{self.name}.last.log"

    def remove(self) -> None:
        """Delete the VM's state, keeping its engine log (if any) as ``<name>.last.log``.

        A sandboxed VM whose supervisor died (SIGKILL, OOM) leaves its jail, mounts and
        cgroups behind; they are torn down here, like ozone's ``-clean-resource``.
        """
        meta = self.meta() if self.meta_file.exists() else None
        sandbox = meta.extra.get("sandbox") if meta else None
        if sandbox:
            from engine.ozone.teardown import clean_stale

            try:
                clean_stale(sandbox["name"], sandbox["exec"])
            except Exception as exc:  # never lose the state dir over a failed clean-up
                logging.getLogger(__name__).warning(
                    "%s: sandbox clean-up failed: %s", self.name, exc
                )
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size:
                os.replace(self.log_file, self.last_log)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Claim:
    """A freshly claimed VM directory; ``lock_fd`` must be passed to the engine process."""

    vm: VmDir
    lock_fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _ensure_root() -> Path:
    root = runtime_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HostError(
            f"cannot create the runtime folder {root}: {exc.strerror}",
            hint=f"set {RUNTIME_ENV} to a writable folder",
        ) from None
    return root


def claim(name: str) -> Claim:
    """Take ``name`` for a new VM: refused if a VM of that name runs; stale state is cleaned."""
    check_name(name)
    vm = VmDir(name, _ensure_root() / name)
    vm.path.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(vm.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        meta = vm.meta()
        pid = f" (pid {meta.pid})" if meta else ""
        raise HostError(
            f"a VM named '{name}' is already running{pid}",
            hint=f"stop it with 'svlaunch down {name}' or give this VM another name",
        ) from None
    meta = vm.meta()
    if meta is not None and pid_alive(meta.pid, meta.pid_start):
        os.close(fd)
        raise HostError(
            f"a VM named '{name}' is already running (pid {meta.pid})",
            hint=f"stop it with 'svlaunch down {name}' or give this VM another name",
        )
    for entry in vm.path.iterdir():  # stale state of a crashed engine
        if entry.name != "lock":
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return Claim(vm, fd)


def find(name: str) -> VmDir:
    """The running VM ``name``; stale state is cleaned and reported as not running."""
    check_name(name)
    vm = VmDir(name, runtime_root() / name)
    if not vm.path.is_dir():
        raise HostError(f"no VM named '{name}' is running", hint="'svlaunch ps' lists VMs")
    if not vm.alive():
        vm.remove()
        raise HostError(
            f"VM '{name}' is not running (its engine died; stale state cleaned)",
            hint="look at its log, or start it again with 'svlaunch up'",
        )
    return vm


def all_vms(clean: bool = True) -> list[VmDir]:
    """Every live VM; with ``clean``, directories left by dead engines are removed."""
    root = runtime_root()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not is_vm_name(entry.name):
            continue
        vm = VmDir(entry.name, entry)
        if vm.alive():
            out.append(vm)
        elif clean and vm.meta_file.exists():
            vm.remove()
    return out


def uptime_text(started: float, now: float | None = None) -> str:
    secs = max(0, int((now or time.time()) - started))
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}:{m:02d}:{s:02d}"

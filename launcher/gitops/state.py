"""What svlaunch knows about the VMs it applied: the host state file and each VM's record.

``<root>/.gitops/state.json`` (``HostState``, versioned, written atomically: scratch file,
fsync, rename, fsync of the folder) is the host's index: per VM the source, revision and path
it came from, the hash of its normalized model, whether svlaunch created it (only those are
ever pruned), what was made for it, when it was applied, and the agent's restart bookkeeping.

``<root>/<name>/gitops.json`` (``VmRecord``, in the VM's runtime folder, recorded for clean-up
like every file there) holds the same facts for one running VM plus the manifest text it was
started from. It lives and dies with the VM, so a lost or corrupt state file is rebuilt from
the running VMs' records (``adopt``) without touching any VM; a running VM without a record
(started by hand) is adopted as not created by svlaunch, so it is never pruned.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from launcher.errors import HostError

STATE_VERSION = 1
STATE_FILE = "state.json"
RECORD_FILE = "gitops.json"  # in a VM's runtime folder
GITOPS_DIR = ".gitops"  # a dot name: never a VM name (engine.names)
MAX_STATE = 64 << 20


def gitops_dir(create: bool = True) -> Path:
    """``<runtime root>/.gitops`` (0700, trusted like the root: ours, nobody else's)."""
    from launcher.runtime_root import DIR_MODE, open_dir, open_root, runtime_root

    root = open_root(create=create)
    path = runtime_root() / GITOPS_DIR
    if root is None:
        return path
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(GITOPS_DIR, DIR_MODE, dir_fd=root)
        with contextlib.suppress(FileNotFoundError):
            os.close(open_dir(GITOPS_DIR, "GitOps folder", dir_fd=root, shown=path))
    finally:
        os.close(root)
    return path


@dataclass
class VmState:
    """One VM in the host state file."""

    source: str = ""  # the source text it was applied from
    revision: str = ""
    path: str = ""  # the manifest's path in the source
    model_hash: str = ""  # of the normalized model ("" for an adopted VM of unknown origin)
    created: bool = False  # svlaunch apply started it: prune may destroy it
    adopted: bool = False  # found running (state lost, or started by hand)
    applied: float = 0.0
    made: dict[str, Any] = field(default_factory=dict)  # runtime folder, taps, jail
    engine: dict[str, Any] = field(default_factory=dict)  # {"pid", "start"} of the instance
    pending: str = ""  # "start": svlaunch stopped it to restart it, or a start failed
    last_exit: dict[str, Any] | None = None  # how it last ended (the engine's exit record)
    restarts: int = 0  # the agent's restarts since it last ran long enough
    next_restart: float = 0.0  # the agent's back-off: not before this time (wall clock)

    @classmethod
    def from_json(cls, data: Any) -> VmState:
        if not isinstance(data, dict):
            raise ValueError("a VM entry is not an object")
        known = {f.name: f for f in fields(cls)}
        vm = cls(**{k: v for k, v in data.items() if k in known})
        for name, want in (("source", str), ("revision", str), ("path", str),
                           ("model_hash", str), ("pending", str)):  # fmt: skip
            if not isinstance(getattr(vm, name), want):
                raise ValueError(f"{name} is not a {want.__name__}")
        if not isinstance(vm.made, dict) or not isinstance(vm.engine, dict):
            raise ValueError("made/engine are not objects")
        return vm


@dataclass
class HostState:
    """``state.json``: the host's index of what svlaunch applied."""

    host: str
    source: str = ""
    revision: str = ""  # the last revision applied without an error
    applied: float = 0.0
    vms: dict[str, VmState] = field(default_factory=dict)
    note: str = ""  # set when this state was rebuilt (why), not stored

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "host": self.host,
            "source": self.source,
            "revision": self.revision,
            "applied": self.applied,
            "vms": {n: asdict(v) for n, v in sorted(self.vms.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> HostState:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, not {STATE_VERSION}")
        vms = data.get("vms")
        if not isinstance(vms, dict) or not isinstance(data.get("host"), str):
            raise ValueError("no host or vms")
        return cls(
            host=data["host"],
            source=str(data.get("source", "")),
            revision=str(data.get("revision", "")),
            applied=float(data.get("applied", 0.0)),
            vms={str(n): VmState.from_json(v) for n, v in vms.items()},
        )


def load_state(host: str, repair: bool = False) -> HostState:
    """The host state; a missing, unreadable or corrupt file is rebuilt from the running VMs
    (``adopt``; with ``repair`` the corrupt one is kept aside as ``state.json.corrupt``);
    ``note`` says which."""
    folder = gitops_dir(create=True)
    path = folder / STATE_FILE
    problem = ""
    try:
        raw = _read(path)
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raw, problem = None, f"cannot read {path}: {exc.strerror}"
    if raw is not None:
        try:
            state = HostState.from_json(json.loads(raw))
            if state.host == host:
                return state
            problem = f"{path} belongs to host {state.host!r}, not {host!r}"
        except (ValueError, TypeError) as exc:
            problem = f"{path} is corrupt ({exc})"
        if repair:
            with contextlib.suppress(OSError):
                os.replace(path, folder / (STATE_FILE + ".corrupt"))
    state = adopt(HostState(host))
    if problem or state.vms:
        why = problem or "no state file"
        state.note = f"{why}; rebuilt from the running VMs ({len(state.vms)} adopted)"
    return state


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, MAX_STATE)
    finally:
        os.close(fd)


def save_state(state: HostState) -> None:
    """Write the state atomically: a crash leaves the old file or the new one, never half."""
    folder = gitops_dir(create=True)
    data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
    try:
        write_atomic(folder, STATE_FILE, data)
    except OSError as exc:
        raise HostError(
            f"cannot write {folder / STATE_FILE}: {exc.strerror}",
            hint="check the runtime folder's file system (full? read-only?)",
        ) from None


def write_atomic(folder: Path, name: str, data: bytes) -> None:
    """``name`` in ``folder`` replaced by ``data``: scratch file, fsync, rename, fsync folder."""
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        scratch = f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch, dir_fd=dfd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(scratch, flags, 0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(scratch, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- the per-VM record --------------------------------------------------------------------------


@dataclass
class VmRecord:
    """``gitops.json`` in a running VM's folder: where it came from and what it runs."""

    host: str
    source: str
    revision: str
    path: str
    model_hash: str
    text: str  # the manifest as applied (old values for the next diff)
    format: str  # "toml" | "yaml"
    base_dir: str
    created: bool = True
    applied: float = 0.0
    started: float = 0.0  # meta.started of the instance this record describes
    devices: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> {id: file}
    slots: dict[str, list[str | None]] = field(default_factory=dict)  # kind -> device id/slot
    balloon: int | None = None  # the balloon target asked for
    paused: bool = False  # the manifest says the VM stays paused

    def to_json(self) -> bytes:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=1).encode()

    @classmethod
    def from_json(cls, data: Any) -> VmRecord | None:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return None
        known = {f.name for f in fields(cls)}
        try:
            rec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
        strings = (rec.host, rec.source, rec.revision, rec.path, rec.model_hash, rec.text)
        if not all(isinstance(s, str) for s in strings) or not isinstance(rec.slots, dict):
            return None
        return rec


def read_record(vm: Any) -> VmRecord | None:
    """The record in ``vm``'s runtime folder (a ``launcher.runtime.VmDir``), if any."""
    raw = vm.read(RECORD_FILE)
    if raw is None:
        return None
    try:
        return VmRecord.from_json(json.loads(raw))
    except ValueError:
        return None


def write_record(vm: Any, record: VmRecord) -> None:
    vm.write_file(RECORD_FILE, record.to_json())


def adopt(state: HostState) -> HostState:
    """Every running VM into ``state``: from its record when it has one (same host), else as
    an adopted VM of unknown origin that svlaunch did not create. Nothing is signalled."""
    from launcher import runtime

    for vm in runtime.all_vms(clean=False):
        if vm.name in state.vms:
            continue
        rec = read_record(vm)
        meta = vm.meta()
        engine = {} if meta is None else {
            "pid": meta.engine_pid or meta.pid, "start": meta.engine_start or meta.pid_start
        }  # fmt: skip
        if rec is not None and rec.host == state.host:
            state.vms[vm.name] = VmState(
                rec.source, rec.revision, rec.path, rec.model_hash, created=rec.created,
                adopted=True, applied=rec.applied, made={"runtime": str(vm.path)}, engine=engine,
            )  # fmt: skip
        else:
            state.vms[vm.name] = VmState(
                adopted=True, applied=time.time(), made={"runtime": str(vm.path)}, engine=engine
            )
    return state

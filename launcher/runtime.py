"""Per-VM runtime state: one folder per VM, what svlaunch made for it, and the paths it holds.

Layout of ``<root>/<name>/`` (0700): ``lock`` (held by the engine while it lives),
``record.json`` (every file made for this VM and every host path it holds), ``plan.json``,
``meta.json`` (what ``ps`` shows), ``pid``, ``qmp.sock`` (when the manifest names no QMP
socket), ``serial.sock`` (a detached VM's console), ``engine.log``, ``exit.json`` (how the
engine ended). docs/lifecycle.md gives the records' formats and the rules below; a gone VM
leaves ``<name>.last.log`` and ``<name>.last.exit.json`` in the root.

The root and which folders are trusted: ``launcher/runtime_root.py``; ``meta.json`` and
``record.json``: ``launcher/runtime_record.py``; one VM's folder (``VmDir``):
``launcher/runtime_dir.py``; clean-up: ``launcher/runtime_clean.py``. This module claims, finds
and lists VMs.

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
import fcntl
import os
import time
from dataclasses import dataclass

from engine.names import VM_NAME_HINT, is_vm_name
from launcher.errors import HostError, UsageError
from launcher.identity import pid_alive, process_start_time  # noqa: F401  (re-exported)
from launcher.runtime_dir import (  # noqa: F401  (re-exported)
    LAST_EXIT,
    MAX_STATE_BYTES,
    SCRATCH,
    VmDir,
    read_at,
)
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


def check_name(name: str) -> str:
    if not is_vm_name(name):
        raise UsageError(f"invalid VM name {name!r}", hint=VM_NAME_HINT)
    return name


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

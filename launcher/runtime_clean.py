"""Clean-up of a VM's runtime state, and the check that two VMs never share a host path.

Only what ``record.json`` lists is removed, each entry only while its path still names the file
recorded (same device and inode); an engine socket made in the VM's own folder before its
inode was seen is removed if it is a socket or a symlink nobody listens on. Anything else left
in the folder keeps the folder (and a later ``up`` of the name says what is in the way).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from launcher.errors import HostError
from launcher.runtime_dir import SCRATCH, VmDir
from launcher.runtime_ended import keep_exit_record
from launcher.runtime_record import Made
from launcher.runtime_root import ROOT_LOCK, open_dir, open_root, runtime_root, trust

log = logging.getLogger(__name__)


def _clean_sandbox(vm: VmDir) -> None:
    meta = vm.meta()
    sandbox = meta.extra.get("sandbox") if meta else None
    if not isinstance(sandbox, dict):
        return
    from engine.ozone.teardown import clean_stale

    try:
        clean_stale(str(sandbox["name"]), str(sandbox["exec"]))
    except Exception as exc:  # never lose the state dir over a failed clean-up
        log.warning("%s: sandbox clean-up failed: %s", vm.name, exc)


def _still_ours(item: Made, st: os.stat_result, in_dir: bool) -> bool:
    if item.ident is not None:
        return item.matches(st)
    # not seen yet: an engine socket (or the sandbox's link to it) in our own 0700 folder
    return (
        in_dir
        and item.kind in ("socket", "link")
        and (stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode))
    )


def _remove_item(vm: VmDir, item: Made, d: int, root: int) -> None:
    from engine.ownfiles import listener_pid

    in_dir = not os.path.isabs(item.path)
    where = d if in_dir else None
    try:
        st = os.lstat(item.path, dir_fd=where)
    except OSError:
        return
    if not _still_ours(item, st, in_dir):
        return
    full = str(vm.path / item.path) if in_dir else item.path
    if stat.S_ISSOCK(st.st_mode) and listener_pid(full) is not None:
        return  # somebody serves it: not a leftover
    if item.path == "engine.log" and st.st_size:
        with contextlib.suppress(OSError):
            os.rename(item.path, vm.last_log.name, src_dir_fd=d, dst_dir_fd=root)
            return
    if item.path == "exit.json" and in_dir and stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):
            keep_exit_record(vm, d, root, st)
            return
    with contextlib.suppress(OSError):
        os.unlink(item.path, dir_fd=where)


def _remove_made(vm: VmDir, d: int, root: int, keep: tuple[str, ...]) -> None:
    record = vm.record()
    if record is None:
        return
    for item in reversed(record.made):
        if item.path not in keep:
            _remove_item(vm, item, d, root)
    for name in SCRATCH:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(name, dir_fd=d).st_mode):
                os.unlink(name, dir_fd=d)
    if "record.json" not in keep:
        with contextlib.suppress(OSError):
            os.unlink("record.json", dir_fd=d)


def remove_vm(vm: VmDir) -> None:
    """``VmDir.remove``: the recorded files, then the folder if it is empty."""
    root = open_root(create=False)
    if root is None:
        return
    try:
        try:
            d = open_dir(vm.name, "runtime entry", dir_fd=root, shown=vm.path)
        except (OSError, HostError):
            return  # gone, or not a folder svlaunch made: nothing of ours to remove
        try:
            _clean_sandbox(vm)
            _remove_made(vm, d, root, keep=())
        finally:
            os.close(d)
        try:
            os.rmdir(vm.name, dir_fd=root)
        except OSError:
            log.info("%s: %s keeps files svlaunch did not make", vm.name, vm.path)
    finally:
        os.close(root)


def clean_for_claim(vm: VmDir) -> None:
    """Before a new VM takes the name (its lock held): remove a dead engine's recorded state;
    refuse when anything else is in the folder."""
    root = open_root(create=False)
    assert root is not None
    try:
        d = open_dir(vm.name, "runtime entry", dir_fd=root, shown=vm.path)
        try:
            _clean_sandbox(vm)
            _remove_made(vm, d, root, keep=("lock",))
            left = sorted(n for n in os.listdir(d) if n != "lock")
        finally:
            os.close(d)
    finally:
        os.close(root)
    if left:
        shown = ", ".join(repr(n) for n in left[:5]) + (
            f" and {len(left) - 5} more" if len(left) > 5 else ""
        )
        raise HostError(
            f"the runtime folder {vm.path} holds files svlaunch did not make: {shown}",
            hint=f"check them and remove them (rm -r {vm.path}), or give this VM another name",
        )


def _same_path(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))

    return a == b or norm(a) == norm(b)


def _running_holders(vm: VmDir, root: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, holds) of every other live VM."""
    out = []
    for name in sorted(os.listdir(root)):
        if name == vm.name or name == ROOT_LOCK:
            continue
        try:
            trust(os.lstat(name, dir_fd=root), name, "runtime entry")
        except (OSError, HostError):
            continue
        other = VmDir(name, runtime_root() / name)
        record = other.record()
        if record is not None and other.alive():
            out.append((name, record.holds))
    return out


def check_holds(vm: VmDir, holds: list[tuple[str, str]], root: int) -> None:
    """Refuse paths another running VM holds, and sockets something already serves."""
    from engine.ownfiles import listener_pid

    owners = _running_holders(vm, root)
    for path, role in holds:
        for name, theirs in owners:
            if any(_same_path(path, p) for p, _ in theirs):
                what = {
                    "tap": f"tap {os.path.basename(path)}",
                    "vsock": f"vsock guest CID {os.path.basename(path).removeprefix('cid-')}",
                }.get(role, f"{path} ({role})")
                raise HostError(
                    f"{what} belongs to the running VM {name!r}",
                    hint="give each VM its own sockets, pidfile, chardev files, disks, taps "
                    "and vsock CIDs",
                )
        if role != "socket":
            continue
        try:
            pid = listener_pid(path)
        except OSError:
            pid = None
        if pid is not None:
            who = f"process {pid}" if pid else "another process"
            raise HostError(
                f"the socket {path} is in use by {who}",
                hint="stop what serves it, or choose another path for this VM",
            )

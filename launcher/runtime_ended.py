"""What a VM that has gone leaves: its exit record, kept as ``<root>/<name>.last.exit.json``.

The engine (or its sandbox supervisor) writes ``exit.json`` in the VM's folder as it ends
(``engine.ending``, docs/lifecycle.md); the folder's clean-up keeps it in the root, next to
``<name>.last.log``, until the name runs again and stops. ``ps`` (the ENDED column, ``-a``),
``status`` and ``up`` read it here; nothing here trusts the file: it is opened relative to the
checked root without following a symlink, bounded, and parsed by ``engine.ending.parse_record``.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from engine.names import is_vm_name
from launcher.runtime_dir import LAST_EXIT, MAX_STATE_BYTES, VmDir
from launcher.runtime_root import open_root, runtime_root

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: what the kept record says when the engine left ``exit.json`` empty
UNRECORDED = (
    "the engine ended without recording how: killed by a signal it cannot catch "
    "(SIGKILL, the OOM killer), or it never started"
)


def keep_exit_record(vm: VmDir, d: int, root: int, st: os.stat_result) -> None:
    """At clean-up (``d``: the VM's folder, ``st``: its ``exit.json``, recorded as ours):
    ``exit.json`` becomes ``<root>/<name>.last.exit.json``. An empty one (the engine died
    unrecorded) is first filled with a record saying so: the kept record is always this run's,
    never an earlier one's."""
    if not st.st_size:
        from engine import ending

        fd = os.open("exit.json", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise OSError("exit.json was replaced")
            os.write(fd, ending.encode(ending.record(None, None, reason=UNRECORDED)))
        finally:
            os.close(fd)
    os.rename("exit.json", vm.last_exit.name, src_dir_fd=d, dst_dir_fd=root)


def last_record(vm: VmDir) -> dict[str, Any] | None:
    """How the last run of ``vm``'s name ended (``engine.ending.parse_record``), or None."""
    from engine.ending import parse_record

    root = open_root(create=False)
    if root is None:
        return None
    try:
        fd = os.open(vm.last_exit.name, _READ, dir_fd=root)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return parse_record(os.read(fd, MAX_STATE_BYTES))
    except OSError:
        return None
    finally:
        os.close(fd)


def stopped_vms(running: list[VmDir]) -> list[VmDir]:
    """VMs that have gone and left an exit record, but not those of ``running`` (a name that
    runs again keeps its last record until it stops)."""
    root = open_root(create=False)
    if root is None:
        return []
    live = {vm.name for vm in running}
    out = []
    try:
        for entry in sorted(os.listdir(root)):
            name = entry.removesuffix(LAST_EXIT)
            if name == entry or name in live or not is_vm_name(name):
                continue
            try:
                if stat.S_ISREG(os.lstat(entry, dir_fd=root).st_mode):
                    out.append(VmDir(name, runtime_root() / name))
            except OSError:
                continue
    finally:
        os.close(root)
    return out


def ended_text(rec: dict[str, Any] | None) -> str:
    """A record in a few words, for tables: ``guest-panic (7)``, ``killed (SIGKILL)``."""
    if rec is None:
        return "-"
    if rec["cause"]:
        return f"{rec['cause']} ({rec['code']})"
    if rec["signal"]:
        import signal as sig

        num = rec["signal"]
        name = sig.Signals(num).name if num in sig.Signals._value2member_map_ else str(num)
        return f"killed ({name})"
    return "unrecorded" if rec["code"] is None else f"exit {rec['code']}"


def guest_ended_it(vm: VmDir) -> bool:
    """The VM's own ``exit.json`` (before clean-up) says the guest ended it: it ran."""
    from engine.ending import parse_record

    rec = parse_record(vm.read("exit.json"))
    return rec is not None and rec["guest"] is True


def ending_line(vm: VmDir) -> str | None:
    """``web: ended: guest-panic (7)``, from the VM's own ``exit.json``."""
    from engine.ending import parse_record

    rec = parse_record(vm.read("exit.json"))
    return None if rec is None else f"{vm.name}: ended: {ended_text(rec)}"

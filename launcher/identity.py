"""Is that process, or whoever answers that socket, really this VM's engine?

Pids are reused and socket paths can be taken over, so nothing here trusts either alone
(docs/lifecycle.md, "Identity"):

- a process is the one svlaunch started when its pid, its start time (``/proc/<pid>/stat``
  field 22) and its command line (``--plan <the VM's plan file>``) all match the record;
- a signal goes through a pidfd opened *before* that check, so it reaches the process that was
  checked even if the pid is recycled a moment later (``send_signal``, the one way svlaunch
  signals a VM);
- a QMP socket is the VM's when the process that listens on it (``SO_PEERCRED``) is the VM's
  engine and ``query-name`` gives the VM's name (``connect``).
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import HostError

if TYPE_CHECKING:
    import socket

    from launcher.qmpclient import QmpClient
    from launcher.runtime import Meta


class NotTheVm(HostError):
    """A process or socket that svlaunch's record points at belongs to someone else now."""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields if len(fields) > 19 else None


def process_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started (field 22 of /proc/pid/stat)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except ValueError:
        return None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """``pid`` runs (a zombie counts as gone) and, with ``start_time``, is that same process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == str(start_time)


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]]


def runs_plan(argv: list[str], plan_file: str) -> bool:
    """The engine (``python ... run --plan F``) or sandbox supervisor (``python -m engine.ozone
    run --plan F``) command line for plan ``F``."""
    return any(a == "--plan" and b == plan_file for a, b in itertools.pairwise(argv))


def is_engine(meta: Meta) -> bool:
    """``meta.pid`` is still the process svlaunch started for this VM (see module doc)."""
    if meta.pid_start is None or not pid_alive(meta.pid, meta.pid_start):
        return False
    return not meta.plan or runs_plan(command_line(meta.pid), meta.plan)


def send_signal(meta: Meta, sig: int) -> bool:
    """Signal the VM's engine (or sandbox supervisor); False when it is gone. Raises
    ``HostError`` when the pid now belongs to another process: it is never signalled."""
    try:
        pidfd = os.pidfd_open(meta.pid)
    except ProcessLookupError:
        return False
    try:
        if not pid_alive(meta.pid):
            return False
        if not is_engine(meta):  # checked after pidfd_open: the pidfd is that process
            raise NotTheVm(
                f"pid {meta.pid} is no longer VM {meta.name!r}'s engine (its start time or "
                "command line differs); not signalling it",
                hint="the engine is gone; 'svlaunch ps' clears its state",
            )
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def check_peer(client: QmpClient, name: str, pids: set[int]) -> int:
    """Raise unless the QMP server behind ``client`` is one of ``pids`` and is VM ``name``;
    returns the server's pid."""
    from engine.ownfiles import peer_pid

    pid = peer_pid(client.sock)
    if pid not in pids:
        raise NotTheVm(
            f"the QMP socket {client.path} is answered by pid {pid}, not by VM {name!r}'s "
            f"engine (pid {', '.join(map(str, sorted(pids)))}); refusing to talk to it",
            hint="another process took over that path; stop it, or give the VMs distinct sockets",
        )
    got = client.execute("query-name")
    got = got.get("name") if isinstance(got, dict) else None
    if got != name:
        raise NotTheVm(
            f"the QMP socket {client.path} belongs to VM {got!r}, not {name!r}; refusing to "
            "talk to it",
            hint="two VMs name the same socket path; give each its own",
        )
    return pid


def connect(meta: Meta, timeout: float = 5.0) -> QmpClient:
    """A QMP session with the VM ``meta`` describes, never with whoever else answers there."""
    from launcher.qmpclient import QmpClient

    client = QmpClient.connect(meta.qmp, timeout=timeout)
    try:
        check_peer(client, meta.name, {meta.engine_pid or meta.pid})
    except BaseException:
        client.close()
        raise
    return client


def check_socket_peer(sock: socket.socket, path: str, meta: Meta) -> None:
    """Raise unless the connected unix socket ``sock`` (a serial console at ``path``) is served
    by the VM's engine (checked on the connection itself: a console takes one client)."""
    from engine.ownfiles import peer_pid

    pid = peer_pid(sock)
    want = meta.engine_pid or meta.pid
    if pid != want:
        raise NotTheVm(
            f"{path} is served by pid {pid}, not by VM {meta.name!r}'s engine (pid {want}); "
            "refusing to attach",
            hint="another process took over that path",
        )

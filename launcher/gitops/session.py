"""One look at the host: fetch the source, validate it, read the state, see what runs, diff.

``diff``, ``apply`` and the agent all start here, so they agree on what a change is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import HostError, UsageError
from launcher.gitops.desired import Desired, build
from launcher.gitops.observe import Observed, observe
from launcher.gitops.plan import Plan, make_plan
from launcher.gitops.source import FETCH_TIMEOUT, Snapshot, SourceSpec, snapshot
from launcher.gitops.state import HostState, gitops_dir, load_state

LOCK_FILE = "apply.lock"


def host_name(given: str | None) -> str:
    """``--host NAME``, or this machine's hostname."""
    from launcher.validate.placement import is_host_name

    name = given if given is not None else socket.gethostname()
    if not is_host_name(name):
        raise UsageError(
            f"{name!r} is not a host name",
            hint="letters, digits and '-' in dot-separated labels (--host NAME)",
        )
    return name


@dataclass
class Inputs:
    """Everything one diff is made of."""

    spec: SourceSpec
    host: str
    workdir: Path
    desired: Desired
    state: HostState
    observed: Observed
    plan: Plan | None  # None when the source has errors: nothing may be applied


def look(
    spec: SourceSpec, host: str, *, prune: bool, clean: bool = False,
    timeout: float = FETCH_TIMEOUT, snap: Snapshot | None = None,
) -> Inputs:  # fmt: skip
    """Fetch, validate, observe, diff. ``clean``: dead VMs' folders are removed after their exit
    records were taken into the state (apply and the agent; a diff changes nothing). ``snap``:
    a revision already read (the agent's last good one) instead of a fetch."""
    workdir = gitops_dir(create=True)
    if snap is None:
        snap = snapshot(spec, workdir, timeout)
    desired = build(snap, host, workdir)
    state = load_state(host, repair=clean)
    observed = observe(ask=True, clean=clean)
    for name, record in observed.exits.items():
        if name in state.vms:
            state.vms[name].last_exit = record
    plan = None if desired.errors else make_plan(desired, state, observed, prune)
    return Inputs(spec, host, workdir, desired, state, observed, plan)


@contextlib.contextmanager
def apply_lock(wait: bool) -> Iterator[None]:
    """One apply at a time on a host (an ``apply`` and the agent included)."""
    path = gitops_dir(create=True) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise HostError(
                "another svlaunch apply (or the agent) is applying on this host"
                + (f" (pid {holder})" if holder.isdigit() else ""),
                hint="wait for it to finish ('svlaunch agent status' shows the agent)",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)

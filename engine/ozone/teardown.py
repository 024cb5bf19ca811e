"""Undo a sandbox from its state file alone: after a clean exit, a crash, or a killed supervisor.

``teardown_state`` mirrors ``Sandbox.realize`` newest first; ``teardown_named`` is ozone's
``-clean-resource`` by name; ``clean_stale`` is the crash clean-up path the supervisor takes
before building a sandbox whose name a dead supervisor left behind.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from engine.ozone import sys as osys
from engine.ozone.cgroup import CgroupSet, Limits
from engine.ozone.errors import SandboxError, from_oserror
from engine.ozone.state import DEFAULT_STATE_DIR, State, alive


def teardown_state(state: State, cgroups: CgroupSet, check_alive: bool = True) -> None:
    """Mirror of ``realize``, newest first: (engine gone?) → host mounts → jail → socket links →
    sockets/dirs →
    cgroups → pidfile. Mounts inside the engine's mount namespace vanished with it; a mount
    under the jail in the host namespace (none is ever made) is detached before anything is
    deleted, and the jail is removed without crossing into another filesystem."""
    if check_alive and alive(state.engine_pid, state.engine_start):
        raise SandboxError("teardown", f"the engine (pid {state.engine_pid}) is still running", path=state.jail,
                           hint=f"stop the VM first (QMP quit, or kill {state.engine_pid})")  # fmt: skip
    for mnt in sorted(_mounts_under(state.jail), key=len, reverse=True):
        try:
            osys.umount2(mnt, osys.MNT_DETACH)
        except OSError as e:
            raise from_oserror("teardown", e, mnt) from None
    if _mounts_under(state.jail):
        raise SandboxError(
            "teardown", "mounts remain under the jail; not removing it", path=state.jail
        )
    if state.jail_created and os.path.isdir(state.jail):
        _remove_tree(state.jail)
    for host, target in state.links:
        if os.path.islink(host) and os.readlink(host) == target:
            os.unlink(host)  # only the link we made: the path may have been reused since
    from engine.ownfiles import listener_pid

    for sock in state.sockets:  # the engine's own socket paths, never a sweep of their folders
        try:
            if stat.S_ISSOCK(os.lstat(sock).st_mode) and listener_pid(sock) is None:
                os.unlink(sock)  # a socket the engine left (crash) that nobody serves
        except OSError:
            continue
    for d in reversed(state.made_dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass  # not empty: holds files the user wants (logs)
    cgroups.remove(state.cgroups)
    if state.pidfile and state.pidfile_id:
        from engine.ownfiles import unlink_if_same

        unlink_if_same(state.pidfile, state.pidfile_id)


def teardown_named(
    name: str, exec_name: str, state_dir: str = DEFAULT_STATE_DIR, **cg: Any
) -> None:
    """``-clean-resource`` by name: everything from the state file; the plan is not needed."""
    path = State.path_for(state_dir, exec_name, name)
    try:
        state = State.load(path)
    except FileNotFoundError:
        raise SandboxError("teardown", f"no sandbox named {name!r} (no state file)", path=path,
                           hint="check --name/--exec; a sandbox that never started leaves nothing") from None  # fmt: skip
    teardown_state(state, CgroupSet(Limits(), exec_name, name, **cg))
    os.unlink(path)


def clean_stale(name: str, exec_name: str, state_dir: str = DEFAULT_STATE_DIR, **cg: Any) -> bool:
    """Tear down sandbox ``name`` if its supervisor and engine are both gone (they crashed or
    were killed); True if it did. The supervisor calls this *before* ``from_plan`` (whose checks
    must see the host as it will be), so a second run of a name works after a crash."""
    path = State.path_for(state_dir, exec_name, name)
    try:
        old = State.load(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError) as e:
        raise SandboxError("jail", f"unreadable state file: {e}", path=path,
                           hint="remove it after checking that no VM of this name runs") from None  # fmt: skip
    if alive(old.supervisor_pid, old.supervisor_start) or alive(old.engine_pid, old.engine_start):
        return False  # still running: realize refuses with "the jail already exists"
    teardown_state(old, CgroupSet(Limits(), exec_name, name, **cg), check_alive=False)
    os.unlink(path)
    return True


def _mounts_under(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    out = []
    prefix = path.rstrip("/") + "/"
    with open(mountinfo) as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == path or mnt.startswith(prefix):
                out.append(mnt)
    return out


def _remove_tree(path: str) -> None:
    """rmtree that refuses to leave the jail's filesystem (a stray bind mount must never be emptied)."""
    dev = os.lstat(path).st_dev

    def onerror(fn: Any, p: str, exc: Any) -> None:
        raise SandboxError("teardown", f"cannot remove the jail: {exc[1]}", path=p)

    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full) and os.lstat(full).st_dev != dev:
                raise SandboxError(
                    "teardown", "another filesystem is mounted in the jail", path=full
                )
    shutil.rmtree(path, onerror=onerror)

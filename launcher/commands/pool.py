"""start, inspect or stop the engine pool (engines forked in milliseconds)

The pool is a resident process that has the engine imported and forks one engine per VM that
'svlaunch up' asks for, instead of a new interpreter per VM (docs/pool.md). 'svlaunch up'
starts it on first use (in the background: that first VM starts as it always did) and uses it
from then on; without it, 'up' starts the engine itself. Stopping or restarting the pool leaves
running VMs running. SVLAUNCH_POOL=off makes 'up' neither use nor start a pool;
SVLAUNCH_POOL_IDLE sets how many idle seconds a pool started by 'up' waits before it exits.

examples:
  svlaunch pool start          # start it now and wait until it answers
  svlaunch pool status         # pid, uptime, VMs forked, what it could not preload
  svlaunch pool stop           # running VMs keep running
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POOL_ENV = "SVLAUNCH_POOL"
IDLE_ENV = "SVLAUNCH_POOL_IDLE"
DEFAULT_IDLE = 600.0
START_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "status", "stop"))
    parser.add_argument("--json", action="store_true", help="status: print the JSON reply")
    parser.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT,
        help="start/stop: seconds to wait (default %(default)s)",
    )


# -- where ----------------------------------------------------------------------------------------


def _root() -> Path:
    from launcher.runtime import runtime_root

    return runtime_root()


def socket_path() -> Path:
    return _root() / ".pool.sock"  # a dot name is never a VM name


def lock_path() -> Path:
    return _root() / ".pool.lock"


def log_path() -> Path:
    return _root() / ".pool.log"


def enabled() -> bool:
    return os.environ.get(POOL_ENV, "on").lower() not in ("off", "0", "no", "false")


def _idle_exit() -> float:
    try:
        return max(0.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE)))
    except ValueError:
        return DEFAULT_IDLE


# -- starting one ---------------------------------------------------------------------------------


def spawn() -> bool:
    """Start a pool in the background unless one runs or is starting; True if this call did.

    Race-free: a pool holds ``.pool.lock`` (flock) for its whole life, and the spawner takes it
    before starting one and hands that very lock to the new pool, so two ``up`` at once start
    one pool between them, and none while a pool lives."""
    root = _root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a pool lives (or is loading)
        _launch(fd)
        return True
    finally:
        os.close(fd)  # the pool holds its own descriptor of the lock now


def _launch(lock_fd: int) -> None:
    """Fork twice so the pool is nobody's child here; it inherits the held lock."""
    from engine.__main__ import entry_argv

    argv = entry_argv("engine.pool.__main__", "main", "serve", "--socket", str(socket_path()),
                      "--lock-fd", str(lock_fd), "--idle-exit", f"{_idle_exit():g}")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    log = os.open(log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)  # fmt: skip
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                subprocess.Popen(argv, pass_fds=(lock_fd,), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=log, cwd="/", env=env)  # fmt: skip
                code = 0
            finally:
                os._exit(code)
        os.waitpid(pid, 0)
    finally:
        os.close(log)


def status() -> dict[str, Any] | None:
    """The pool's status reply, or None when no pool answers."""
    from engine.pool import client

    try:
        reply, _ = client.call(str(socket_path()), {"op": "status"}, reply_timeout=5.0)
    except (client.NoPool, client.PoolRefused):
        return None
    return reply


def wait_until_serving(timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        st = status()
        if st is not None or time.monotonic() > deadline or not _lock_held():
            return st
        time.sleep(0.05)


def _lock_held() -> bool:
    try:
        fd = os.open(lock_path(), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# -- up's hook ------------------------------------------------------------------------------------


class PoolProcess:
    """A pool-forked engine, handled the way ``up`` handles its own child process (``pid``,
    ``poll``, ``wait``, ``terminate``): through its pidfd, with the exit status read from the
    VM's ``exit.json`` (nobody can ``waitpid`` an engine that is not their child)."""

    def __init__(self, pid: int, pidfd: int, vm: Any) -> None:
        self.pid, self.pidfd, self.vm = pid, pidfd, vm
        self.returncode: int | None = None

    def _ended(self, timeout: float | None) -> bool:
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def _code(self) -> int:
        rec = self.vm.exit_record()
        if rec is None or not isinstance(rec.get("code"), int):
            _note_in_log(self.vm, f"svlaunch: the engine (pid {self.pid}) ended without "
                         "recording how: killed by a signal it cannot catch (SIGKILL, the OOM killer)")  # fmt: skip
            return 1
        return int(rec["code"])

    def poll(self) -> int | None:
        if self.returncode is None and self._ended(0):
            self.returncode = self._code()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                raise subprocess.TimeoutExpired(["engine"], timeout or 0)
            self.returncode = self._code()
        return self.returncode

    def terminate(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _note_in_log(vm: Any, line: str) -> None:
    try:
        fd = os.open(vm.log_file, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


_WANTED: list[bool] = []


def spawn_if_wanted() -> None:
    """Start a pool for the next VMs if this run found none: called once this run's VM answers,
    so the pool's warm-up never competes with the start it could not serve."""
    if _WANTED:
        _WANTED.clear()
        spawn()


def start_through_pool(
    vm: Any, lock_fd: int, log_fd: int, *, paused: bool, incoming: str | None = None
) -> PoolProcess | None:
    """The VM's engine, forked by the pool; None when no pool serves (then ``up`` starts the
    engine itself, as without a pool). On first use this starts a pool for the next VMs.
    ``incoming``: a restore request (the plan's own ``incoming``)."""
    if not enabled():
        return None
    from engine.pool import client
    from launcher.errors import EngineError

    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    exit_fd = os.open(vm.exit_file, flags, 0o600)
    try:
        fds = {"lock": lock_fd, "log": log_fd, "exit": exit_fd}
        options = client.client_options(paused=paused, name=vm.name, incoming=incoming)
        started = client.start(str(socket_path()), str(vm.plan_file), fds, options)
    except client.NoPool:
        _forget_exit_file(vm)
        _WANTED.append(True)  # for the next VM, once this one runs (spawn_if_wanted)
        return None
    except client.PoolRefused as e:
        if e.code == "no-reply":  # it may still fork this VM: starting a second one is wrong
            raise EngineError(e.message, hint=e.hint) from None
        _forget_exit_file(vm)
        print(f"svlaunch: the engine pool refused ({e.message}); starting the engine directly",
              file=sys.stderr)  # fmt: skip
        return None
    finally:
        os.close(exit_fd)
    return PoolProcess(started.pid, started.pidfd, vm)


def _forget_exit_file(vm: Any) -> None:
    try:
        os.unlink(vm.exit_file)
    except OSError:
        pass


# -- the command ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from launcher.errors import HostError

    if args.action == "start":
        spawn()
        st = wait_until_serving(args.timeout)
        if st is None:
            raise HostError(
                f"the engine pool did not start within {args.timeout:g}s",
                hint=f"see its log: {log_path()}",
            )
        print(f"pool: serving at {socket_path()} (pid {st['pid']})")
        return 0
    st = status()
    if args.action == "status":
        if st is None:
            raise HostError(
                f"no engine pool answers at {socket_path()}",
                hint="'svlaunch pool start' starts one ('svlaunch up' does on first use)",
            )
        if args.json:
            print(json.dumps(st, indent=2))
            return 0
        up = time.time() - float(st["started"])
        print(f"pool: pid {st['pid']}, up {up:.0f} s, {st['served']} requests served, "
              f"{st['refused']} refused; {st['modules']} modules preloaded")  # fmt: skip
        print(f"pool: socket {st['socket'] or 'from systemd'}, engine {st['engine']}")
        for name, why in st.get("not_preloaded", {}).items():
            print(f"pool: not preloaded: {name}: {why}")
        return 0
    if st is None:
        print("pool: none was running")
        return 0
    from engine.pool import client

    try:
        client.call(str(socket_path()), {"op": "stop"}, reply_timeout=5.0)
    except (client.NoPool, client.PoolRefused):
        pass
    deadline = time.monotonic() + args.timeout
    while _lock_held() and time.monotonic() < deadline:
        time.sleep(0.05)
    if _lock_held():
        raise HostError(f"the engine pool (pid {st['pid']}) did not stop within {args.timeout:g}s")
    print(f"pool: stopped (pid {st['pid']}); running VMs keep running")
    return 0

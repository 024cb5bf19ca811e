"""A forked engine's first steps: shed the pool, become the VM's process, run, record the end.

The pool forks twice (``spare.fork_spare``), ahead of any request: the first child starts a
new session and forks the engine, sends the pool the engine's pidfd and exits, so the engine is
not the pool's child (it survives the pool, and init reaps it). This *spare* closes every
descriptor of the pool and waits on its channel; the next ``start`` request is handed to it
(plan path, options, descriptors), so no fork is on a request's path. The engine then, before
it touches the plan:

1. clears the signal mask and puts back every handler the pool changed;
2. makes the VM's descriptors its own: ``log`` on stdout and stderr, ``/dev/null`` on stdin,
   ``lock`` and ``exit`` kept, every other descriptor closed (the pool's listening socket, other
   requests' descriptors, the pool's lock). Python objects that still name the pool's sockets
   are detached first, so nothing later closes a number the engine has reused;
3. takes the client's ``SVLAUNCH_*`` environment, working folder and umask (what an exec'd
   engine would inherit), reseeds ``random`` (MAC addresses), names itself for ``ps``
   (``comm`` = ``sv-NAME``, and the command line the exec path would have: ``proctitle``);
4. runs the plan: in this process (no sandbox), or as the sandbox supervisor of
   ``engine.ozone`` whose jailed child runs the engine in-process instead of exec'ing a new
   interpreter (``PoolSandbox``);
5. writes how it ended into the ``exit`` file (``engine.ending.record``), since no parent waits
   for it. An engine killed by a signal it cannot handle (SIGKILL, the OOM killer) leaves the
   file empty; a sandboxed one is reported by its supervisor, signal included.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from engine import ending
from engine.errors import EXIT_INTERNAL, SvlaunchError
from engine.ozone import sys as osys
from engine.ozone.sandbox import Sandbox
from engine.pool import preload, proctitle, protocol

if TYPE_CHECKING:
    from engine.ozone.exits import Exit

#: handlers as the interpreter set them, before the pool changed any (``server.serve`` fills it)
ORIGINAL_HANDLERS: dict[int, Any] = {}


class PoolSandbox(Sandbox):
    """The ozone sandbox, with the engine run in the jailed child itself: it was forked from the
    pool, so the engine is already imported (``preload``) and no interpreter starts in the jail."""

    paused = False
    verbose = False

    @classmethod
    def from_plan(cls, plan: Any, **kw: Any) -> Sandbox:
        kw.setdefault("runtime", preload.RUNTIME)  # found once by the pool, not per VM
        return super().from_plan(plan, **kw)

    def _exec(self, argv: list[str], env: dict[str, str], report_fd: int) -> None:
        from engine.ozone.sandbox import JAIL_PLAN

        os.close(report_fd)  # as exec would: the supervisor now knows the jail is complete
        proctitle.set_cmdline(argv)
        os.environ.clear()
        os.environ.update(env)
        code = _run_here(
            JAIL_PLAN, None, paused=self.paused, verbose=self.verbose, exit_fd=self.exit_fd
        )
        _exit(code)


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _run_here(
    plan_path: str, plan: Any, *, paused: bool, verbose: bool, exit_fd: int | None = None
) -> int:
    from engine import __main__ as entry

    return entry.recorded(
        exit_fd, lambda: entry.run(plan_path, paused=paused, verbose=verbose, plan=plan)
    )


def _reset_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig, handler in ORIGINAL_HANDLERS.items():
        signal.signal(sig, handler)


def _own_fds(fds: dict[str, int], detach: list[Any], keep: tuple[int, ...] = ()) -> dict[str, int]:
    """stdio from ``log`` (if given); ``lock``/``exit`` and ``keep`` kept; every other
    descriptor above 2 closed."""
    for obj in detach:  # sockets of the pool: forget their numbers, close_range closes them
        try:
            obj.detach()
        except (OSError, AttributeError):
            pass
    if fds:
        null = os.open(os.devnull, os.O_RDWR)
        log = fds.get("log", null)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
    kept: dict[str, int] = {}
    for name in ("lock", "exit"):
        if name in fds:
            fd = fds[name]
            kept[name] = fd if fd > 2 else os.dup(fd)
    keep = tuple(sorted({*kept.values(), *keep}))
    lo = 3
    for fd in [*keep, 1 << 20]:
        if fd - 1 >= lo:
            osys.close_range(lo, min(fd - 1, (1 << 31) - 2))
        lo = fd + 1
    for fd in keep:
        os.set_inheritable(fd, fd == kept.get("lock"))  # the sandbox passes the lock on
    return kept


def _take_environment(options: dict[str, Any]) -> None:
    for key in [k for k in os.environ if k.startswith(protocol.ENV_PREFIX)]:
        del os.environ[key]
    os.environ.update(options.get("env", {}))
    os.umask(options.get("umask", 0o022))
    try:
        os.chdir(options.get("cwd", "/"))
    except OSError:
        os.chdir("/")
    random.seed()  # the random module also reseeds at fork; said here so nobody has to know
    name = options.get("name")
    if name:
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(f"sv-{name}"[:15])
        except OSError:
            pass


def _record(fds: dict[str, int], data: bytes) -> None:
    fd = fds.get("exit")
    if fd is None:
        return
    try:
        os.write(fd, data)  # the file is new and empty; write(2) is on every seccomp allow-list
    except OSError as e:
        print(f"svlaunch: cannot record how the engine ended: {e.strerror}", file=sys.stderr)


def spare(chan: Any, detach: list[Any], *, warm: bool) -> NoReturn:
    """A spare engine: forked before any request, it drops the pool's descriptors, builds and
    closes a throw-away VM (``warmup``, unless ``warm`` is false: a request is already waiting)
    and waits on ``chan`` for its request (plan, options, descriptors); EOF: the pool is gone."""
    try:
        _reset_signals()
        _own_fds({}, detach, keep=(chan.fileno(),))
        if warm and os.environ.get("SVLAUNCH_POOL_WARMUP", "on") != "off":
            from engine.pool.warmup import warm_up

            if not warm_up():  # the VM starts cold; the pool's log says why
                print(f"svlaunch-pool: spare {os.getpid()}: warm-up failed", file=sys.stderr)
        data, fds, _ = protocol.receive(chan)
        if not data:
            _exit(0)
        request = json.loads(data)
        named = dict(zip(request["fds"], fds, strict=True))
    except BaseException:
        _exit(EXIT_INTERNAL)
    chan.close()
    become_engine(request["plan"], request["options"], named)


def become_engine(plan_path: str, options: dict[str, Any], fds: dict[str, int]) -> NoReturn:
    """The engine's process, forked from the pool, given its request: never returns."""
    code = EXIT_INTERNAL
    kept: dict[str, int] = {}
    try:
        from engine import __main__ as entry

        entry.restart_clock("request received by the forked engine")
        kept = _own_fds(fds, [])
        _take_environment(options)
        paused, verbose = options.get("paused", False), options.get("verbose", False)
        try:
            plan = entry.read_plan(plan_path)
        except ValueError as e:
            print(f"engine: {e}", file=sys.stderr)
            _record(kept, ending.encode(ending.record(1, None, reason=f"bad plan: {e}")))
            _exit(1)
        if options.get("incoming") and plan.incoming is None:  # a restore request (protocol.py)
            import dataclasses

            plan = dataclasses.replace(plan, incoming=options["incoming"])
        module = "engine" if plan.sandbox is None else "engine.ozone"
        proctitle.set_cmdline([sys.executable, "-m", module, "run", "--plan", plan_path])
        if plan.sandbox is None:
            code = _run_here(plan_path, plan, paused=paused, verbose=verbose)
            rec = ending.record(code, entry.ENDING, late_imports=preload.late_imports())
            _record(kept, ending.encode(rec))
        else:
            code = _supervise(plan_path, kept, paused=paused, verbose=verbose)
    except BaseException:
        try:
            traceback.print_exc()
            print("svlaunch: the pool's engine failed (a bug): see the traceback", file=sys.stderr)
            rec = ending.record(code, None, reason="internal error in the forked engine")
            _record(kept, ending.encode(rec))
        except BaseException:
            pass
    _exit(code)


def _supervise(plan_path: str, kept: dict[str, int], *, paused: bool, verbose: bool) -> int:
    from engine.ozone.__main__ import supervise
    from engine.ozone.exits import exit_record

    def ended(end: Exit, report: dict[str, Any] | None) -> None:
        _record(kept, ending.encode(exit_record(end, report)))

    PoolSandbox.paused, PoolSandbox.verbose = paused, verbose
    try:
        return supervise(plan_path, sandbox_class=PoolSandbox, ended=ended)
    except SvlaunchError as e:
        print(f"svlaunch: {e}", file=sys.stderr)
        _record(kept, ending.encode(ending.record(e.exit_code, None, reason=f"sandbox: {e}")))
        return e.exit_code

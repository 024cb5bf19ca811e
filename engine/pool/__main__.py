"""``python -m engine.pool serve``: run the engine pool (docs/pool.md).

    python -m engine.pool serve --socket PATH --lock PATH [--idle-exit S]
    python -m engine.pool serve --lock PATH [--idle-exit S]      # systemd socket activation
    python -m engine.pool serve --socket PATH --lock-fd N ...    # spawned by svlaunch

The lock (a file, flocked for the pool's life) makes sure one pool serves a socket: a second
pool exits at once. ``svlaunch`` passes the lock it already holds (``--lock-fd``), so spawning
a pool on first use is race-free. Exit status: 0 after ``stop``, a signal or an idle exit; 1 when
another pool holds the lock or the socket cannot be made.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys


def _take_lock(args: argparse.Namespace) -> int:
    if args.lock_fd is not None:
        os.set_inheritable(args.lock_fd, False)
        return int(args.lock_fd)
    fd = os.open(args.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"svlaunch-pool: another pool holds {args.lock}") from None
    return fd


#: bytes of command line a forked engine may need to show its own (``proctitle``)
TITLE_ROOM = 1024


def _make_title_room() -> None:
    """Re-exec with a padding argument when this command line is short: a forked engine
    rewrites its command line in place (``proctitle``), and that area cannot grow. Same pid
    (socket activation's ``LISTEN_PID`` still holds), one exec at start-up."""
    from engine.pool import proctitle

    try:
        room = proctitle.area()[1]
    except (OSError, IndexError, ValueError):
        return
    if room < TITLE_ROOM and "--title-room" not in sys.orig_argv:
        os.execv(sys.executable, [*sys.orig_argv, "--title-room", "." * TITLE_ROOM])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.pool", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve engine requests until stopped")
    s.add_argument("--socket", help="unix socket to listen on (not with socket activation)")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--lock", help="lock file held while the pool lives")
    where.add_argument("--lock-fd", type=int, help="an inherited descriptor of the held lock")
    s.add_argument("--idle-exit", type=float, default=0.0,
                   help="exit after this many seconds without a request (0: never)")  # fmt: skip
    s.add_argument("--title-room", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if argv is None:
        _make_title_room()
    lock_fd = _take_lock(args)
    import gc

    gc.disable()  # no collection while loading: freed slots would be filled (copied) per VM
    from engine.pool import preload, server

    # Loaded before the socket exists: a client never waits on a pool that is not ready, and
    # one that finds no socket while the lock is held knows that a pool is on its way.
    preload.preload()
    pool = server.make_pool(args.socket, lock_fd, args.idle_exit)
    gc.collect()
    gc.freeze()
    print(
        f"svlaunch-pool: pid {os.getpid()} serving {args.socket or 'the socket from systemd'} "
        f"({len(preload.PRELOADED)} modules loaded)",
        file=sys.stderr,
        flush=True,
    )
    for name, why in preload.FAILED.items():
        print(f"svlaunch-pool: not preloaded: {name}: {why}", file=sys.stderr, flush=True)
    pool.serve()
    return 0


if __name__ == "__main__":
    from engine.__main__ import crash_guard

    sys.exit(crash_guard(main, "svlaunch-pool"))

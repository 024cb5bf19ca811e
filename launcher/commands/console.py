"""attach to a VM's serial console

Connects this terminal to the VM's serial console socket (a VM started with -d/--tui, or whose
manifest puts the serial on a unix socket). The terminal is in raw mode: everything you type
goes to the guest. Press Ctrl-] to detach; the VM keeps running.

examples:
  svlaunch console web1
  echo 'uname -a' | svlaunch console web1 --timeout 2     # scripted: send, print, leave
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
import time

ESCAPE = 0x1D  # Ctrl-]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="VM name (see 'svlaunch ps')")
    parser.add_argument(
        "--timeout", type=float, default=None, help="leave after this many seconds (scripts)"
    )


RELAY_CHUNK = 1 << 16  # one recv takes all the engine's socket holds, up to this


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (a terminal or pipe may take a chunk in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(
    sock: socket.socket,
    fd_in: int,
    fd_out: int,
    timeout: float | None,
    *,
    leave_on_eof: bool = True,
) -> str:
    """Copy both ways, a chunk per wake-up (the engine writes its console in chunks, see
    docs/console.md); returns why it stopped: "escape" (Ctrl-]), "closed" (the VM hung up),
    "timeout", or "eof" (input ended; with ``leave_on_eof=False`` output goes on instead).

    A slow ``fd_out`` (a terminal) blocks this loop, so the engine's socket fills and the
    engine holds the guest's console back: nothing is lost on the way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(fd_in, select.POLLIN)
    sock_fd = sock.fileno()
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return "timeout"
        ready = dict(poller.poll(None if wait is None else wait * 1000))
        if sock_fd in ready:
            try:
                data = sock.recv(RELAY_CHUNK)
            except ConnectionResetError:
                data = b""
            if not data:
                return "closed"
            write_all(fd_out, data)
        if fd_in in ready:
            try:
                data = os.read(fd_in, 4096)
            except OSError:  # a terminal that hung up, a closed descriptor: input ended
                data = b""
            if not data:
                poller.unregister(fd_in)  # keep printing the guest's answer
                if leave_on_eof and deadline is None:
                    return "eof"
                continue
            if ESCAPE in data:
                data = data[: data.index(ESCAPE)]
                if data:
                    sock.sendall(data)
                return "escape"
            sock.sendall(data)


def run(args: argparse.Namespace) -> int:
    from launcher import runtime
    from launcher.errors import EngineError, HostError

    meta = runtime.find(args.name).meta()
    if meta is None:
        raise EngineError(f"VM '{args.name}' is still starting; try again in a moment")
    if not meta.serial:
        raise HostError(
            f"VM '{args.name}' has no serial console socket (its serial is on the terminal "
            "that ran 'svlaunch up', or it has none)",
            hint="start it with 'svlaunch up -d' to get a console socket",
        )
    from launcher.identity import check_socket_peer

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(meta.serial)
        check_socket_peer(sock, meta.serial, meta)  # the VM's engine, not whoever listens there
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot connect to the serial console {meta.serial}: {exc}") from None
    except HostError:
        sock.close()
        raise
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    saved = None
    if os.isatty(fd_in):
        import termios
        import tty

        saved = termios.tcgetattr(fd_in)
        tty.setraw(fd_in)
        os.write(fd_out, f"[attached to {args.name}; Ctrl-] detaches]\r\n".encode())
    try:
        relay(sock, fd_in, fd_out, args.timeout)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
            os.write(fd_out, b"\r\n[detached]\r\n")
        with contextlib.suppress(OSError):
            sock.close()
    return 0

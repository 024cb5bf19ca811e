"""EventLoop: fd callbacks, cross-thread wake-ups, and a failing callback never kills the loop."""

from __future__ import annotations

import os
import threading

import pytest

from engine.eventloop import EventLoop, IoThread


def test_reader_callback_and_threadsafe_call() -> None:
    loop = EventLoop("t")
    r, w = os.pipe()
    seen: list[bytes] = []

    def on_read() -> None:
        seen.append(os.read(r, 100))
        loop.stop()

    loop.add_reader(r, on_read)
    threading.Timer(0.05, lambda: os.write(w, b"hi")).start()
    loop.run()
    assert seen == [b"hi"]
    ran = threading.Event()
    loop.call_soon_threadsafe(ran.set)
    loop.run_once(timeout=1)
    assert ran.is_set()
    loop.remove_reader(r)
    os.close(r)
    os.close(w)
    loop.close()


@pytest.mark.traceback_ok  # the callback's exception is logged with its traceback, on purpose
def test_failing_callback_is_logged_not_fatal(caplog) -> None:
    loop = EventLoop("t")
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("device bug")

    loop.call_soon_threadsafe(boom)
    loop.call_soon_threadsafe(done.set)
    loop.run_once(timeout=1)
    assert done.is_set()
    assert "device bug" in caplog.text
    loop.close()


def test_iothread_runs_work_on_its_own_thread() -> None:
    io = IoThread("io0")
    io.start()
    names: list[str] = []
    done = threading.Event()

    def work() -> None:
        names.append(threading.current_thread().name)
        done.set()

    io.loop.call_soon_threadsafe(work)
    assert done.wait(2)
    io.stop()
    assert names == ["iothread-io0"]


def test_writer_callback_fires_while_writable_and_shares_the_fd_with_a_reader() -> None:
    import socket

    loop = EventLoop("w")
    a, b = socket.socketpair()
    a.setblocking(False)
    calls: list[str] = []
    loop.add_reader(a.fileno(), lambda: calls.append(a.recv(10).decode()))
    loop.add_writer(a.fileno(), lambda: calls.append("w"))
    loop.run_once(timeout=1)
    assert calls == ["w"]  # writable, nothing to read
    b.send(b"x")
    loop.run_once(timeout=1)
    assert calls == ["w", "x", "w"]
    loop.remove_writer(a.fileno())
    b.send(b"y")
    loop.run_once(timeout=1)
    assert calls[-1] == "y" and calls.count("w") == 2  # the reader survived the writer's removal
    loop.remove_reader(a.fileno())
    loop.run_once(timeout=0.05)
    assert calls.count("w") == 2
    a.close()
    b.close()


def test_call_later_runs_in_deadline_order_and_cancel_skips() -> None:
    import time

    loop = EventLoop("t")
    order: list[str] = []
    start = time.monotonic()
    loop.call_later(0.06, lambda: order.append("late"))
    loop.call_later(0.02, lambda: order.append("early"))
    loop.call_later(0.04, lambda: order.append("cancelled")).cancel()
    while len(order) < 2 and time.monotonic() - start < 2:
        loop.run_once(timeout=None)  # blocks until the next deadline, not forever
    assert order == ["early", "late"]
    assert time.monotonic() - start >= 0.06
    loop.run_once(timeout=0.05)
    assert order == ["early", "late"]
    loop.close()

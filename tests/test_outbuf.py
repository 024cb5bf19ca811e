"""The UART's coalesced output (engine.machine.outbuf): lines leave in one write, partial lines
soon after, nothing is lost or reordered."""

from __future__ import annotations

import threading
import time

from engine.machine.outbuf import CoalescingWriter


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.chunks.append(data)

    @property
    def data(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)


def wait_for(pred, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.001)
    return pred()


def test_a_line_written_byte_by_byte_leaves_in_one_write() -> None:
    sink = Sink()
    w = CoalescingWriter(sink, delay=10.0)  # no timed flush during the test
    for b in b"SVREPORT done\n":
        w.write(bytes((b,)))
    assert sink.chunks == [b"SVREPORT done\n"]
    w.close()


def test_a_partial_line_is_flushed_after_the_delay() -> None:
    sink = Sink()
    w = CoalescingWriter(sink, delay=0.01)
    w.write(b"# ")
    assert wait_for(lambda: sink.data == b"# "), "a prompt without newline never showed"
    w.write(b"x")
    assert wait_for(lambda: sink.data == b"# x")
    w.close()


def test_limit_forces_a_flush_without_newline() -> None:
    sink = Sink()
    w = CoalescingWriter(sink, delay=10.0, limit=8)
    for b in b"0123456789":
        w.write(bytes((b,)))
    assert sink.chunks == [b"01234567"]
    w.close()
    assert sink.data == b"0123456789"


def test_close_flushes_and_later_writes_go_straight_through() -> None:
    sink = Sink()
    w = CoalescingWriter(sink, delay=10.0)
    w.write(b"last words")
    w.close()
    assert sink.data == b"last words"
    w.write(b"!")
    assert sink.data == b"last words!"


def test_concurrent_writers_keep_each_writers_order() -> None:
    sink = Sink()
    w = CoalescingWriter(sink, delay=0.001)

    def writer(tag: bytes) -> None:
        for i in range(300):
            w.write(tag + str(i).encode() + b";")

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    for tag in ("a", "b"):
        seen = [int(x[1:]) for x in sink.data.decode().split(";") if x.startswith(tag)]
        assert seen == list(range(300))
    assert w.writes < 600  # coalesced, not one write per call


def test_thread_init_runs_on_the_flusher_thread() -> None:
    ran: list[str] = []
    w = CoalescingWriter(Sink(), thread_init=lambda: ran.append(threading.current_thread().name))
    assert wait_for(lambda: ran == ["serial-out"])
    w.close()

"""The chardev output queue: chunked flushes off the writer's thread, and its policy for slow,
stuck, absent and failed sinks (docs/console.md). Sinks are plain objects or real pipes; the
loop is the engine's real EventLoop, turned by hand."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from engine.eventloop import EventLoop
from engine.machine.chardev_out import NO_SINK, OutputQueue


class Sink:
    """A sink on a plain object: takes ``cap`` bytes per write (None: all), or would block."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.writes = 0
        self.blocked = False
        self.cap: int | None = None
        self.absent = False
        self.error: int | None = None

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if self.absent:
            return NO_SINK
        if self.blocked:
            raise BlockingIOError(errno.EAGAIN, "would block")
        n = len(data) if self.cap is None else min(self.cap, len(data))
        self.got += data[:n]
        self.writes += 1
        return n


@pytest.fixture
def loop():
    lp = EventLoop("test")
    yield lp
    lp.close()


def turn(loop: EventLoop, until, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while not until():
        if time.monotonic() > end:
            return False
        loop.run_once(timeout=0.01)
    return True


def make(loop: EventLoop, sink: Sink, **kw) -> OutputQueue:
    q = OutputQueue(sink.send, name="t", **kw)
    q.attach(loop)
    return q


def test_a_newline_flushes_at_the_next_turn_without_waiting_for_the_timer(loop) -> None:
    sink = Sink()
    q = make(loop, sink, delay=10.0)
    for b in b"hello\n":
        assert q.put_byte(b)
    assert not sink.got  # never written on the writer's thread
    loop.run_once(timeout=0)
    assert bytes(sink.got) == b"hello\n" and sink.writes == 1


def test_a_partial_line_goes_out_after_the_delay(loop) -> None:
    sink = Sink()
    q = make(loop, sink, delay=0.05)
    start = time.monotonic()
    assert q.write(b"login: ") == 7
    loop.run_once(timeout=0)
    assert not sink.got  # the timer is armed, not due
    assert turn(loop, lambda: sink.got)
    assert bytes(sink.got) == b"login: " and time.monotonic() - start >= 0.05


def test_newlines_closer_than_the_gap_share_a_write(loop) -> None:
    sink = Sink()
    q = make(loop, sink, gap=0.3, delay=0.02)
    q.write(b"first\n")
    loop.run_once(timeout=0)
    q.write(b"second\n")  # within the gap: no wake-up of its own, the timer takes it
    q.write(b"third\n")
    loop.run_once(timeout=0)
    assert bytes(sink.got) == b"first\n" and sink.writes == 1
    assert turn(loop, lambda: sink.writes == 2)  # the lookout timer, one gap after the first
    assert bytes(sink.got) == b"first\nsecond\nthird\n"


def test_a_stream_of_lines_costs_a_write_per_gap_not_one_per_line(loop) -> None:
    """A boot log's pace (a line every few ms): each write wakes the reader, so lines that keep
    coming share a write per ``gap`` (docs/console.md, Measured); none is held past it."""
    sink = Sink()
    q = make(loop, sink, gap=0.05, delay=0.01)
    lines = [b"[%8.6f] a line of a verbose boot\n" % (i / 200) for i in range(100)]
    start = time.monotonic()
    for line in lines:  # 100 lines over about half a second
        q.write(line)
        loop.run_once(timeout=0.005)
    assert turn(loop, lambda: len(sink.got) == sum(map(len, lines)))
    elapsed = time.monotonic() - start
    assert bytes(sink.got) == b"".join(lines)
    assert sink.writes <= elapsed / 0.05 + 2, f"{sink.writes} writes in {elapsed:.2f} s"
    assert sink.writes < len(lines) // 4


def test_a_line_still_being_printed_is_held_until_its_newline(loop) -> None:
    """The timer finds a partial line that grew since it was armed: it waits for more rather
    than writing the line in pieces (each piece a wake-up of the reader)."""
    sink = Sink()
    q = make(loop, sink, delay=0.02, max_wait=5.0)
    q.write(b"[    0.1")
    loop.run_once(timeout=0)  # arms the timer
    for piece in (b"23456] calling ", b"acpi_init", b"+0x0/0x2b0 @ 1"):
        q.write(piece)
        loop.run_once(timeout=0.05)  # a tick passes; the line grew: held
    assert not sink.got
    q.write(b"\n")
    loop.run_once(timeout=0)
    assert bytes(sink.got) == b"[    0.123456] calling acpi_init+0x0/0x2b0 @ 1\n"
    assert sink.writes == 1


def test_a_prompt_that_stopped_growing_goes_out_at_the_next_tick(loop) -> None:
    sink = Sink()
    q = make(loop, sink, delay=0.02, max_wait=5.0)
    q.write(b"login")
    loop.run_once(timeout=0)
    q.write(b": ")  # grew before the first tick: held once
    assert turn(loop, lambda: sink.got)
    assert bytes(sink.got) == b"login: "


def test_flush_size_bytes_flush_at_once(loop) -> None:
    sink = Sink()
    q = make(loop, sink, delay=10.0, flush_size=100)
    q.write(b"x" * 99)
    loop.run_once(timeout=0)
    assert not sink.got
    q.put_byte(ord("x"))
    loop.run_once(timeout=0)
    assert len(sink.got) == 100


def test_a_boot_log_goes_out_in_lines_not_bytes(loop) -> None:
    sink = Sink()
    q = make(loop, sink)
    text = b"".join(b"[%8.6f] line %d of the boot log\n" % (i / 7, i) for i in range(300))
    for i, b in enumerate(text):
        assert q.put_byte(b)
        if b == 0x0A and i % 3 == 0:
            loop.run_once(timeout=0)  # the loop gets a turn now and then, as it does
    assert turn(loop, lambda: len(sink.got) == len(text))
    assert bytes(sink.got) == text
    assert sink.writes <= 300 and q.sent == len(text) and q.dropped == q.refused == 0


def test_the_queue_is_bounded_and_refuses_what_does_not_fit(loop) -> None:
    sink = Sink()
    sink.blocked = True
    q = make(loop, sink, limit=1000)
    assert q.write(b"a" * 900) == 900
    assert q.room() == 100
    assert q.write(b"b" * 300) == 100
    assert q.room() == 0 and not q.put_byte(ord("c"))
    assert q.refused == 201 and q.pending() == 1000


def test_a_slow_sink_holds_bytes_back_and_says_when_there_is_room(loop) -> None:
    sink = Sink()
    sink.blocked = True
    q = make(loop, sink, limit=1000, retry=0.01, stall=30)
    rooms = []
    q.on_room = lambda: rooms.append(q.room())
    q.write(b"0123456789" * 100)
    loop.run_once(timeout=0)
    assert q.room() == 0 and not sink.got and not rooms
    for _ in range(5):  # retried, still blocked: nothing lost, nothing notified
        loop.run_once(timeout=0.05)
    assert q.pending() == 1000 and q.dropped == 0 and not rooms
    sink.blocked, sink.cap = False, 300  # the reader takes a little at a time
    assert turn(loop, lambda: len(sink.got) == 1000)
    assert bytes(sink.got) == b"0123456789" * 100
    assert rooms and rooms[0] >= 500  # once half the queue was free
    assert q.dropped == 0


def test_a_stuck_sink_is_dropped_after_the_stall_and_taken_back_when_it_reads(loop) -> None:
    sink = Sink()
    sink.blocked = True
    q = make(loop, sink, limit=1000, retry=0.01, stall=0.1, gap=0)
    rooms = []
    q.on_room = lambda: rooms.append(q.room())
    q.write(b"x" * 1000)
    assert turn(loop, lambda: q.room() == 1000)  # gave up on it: the guest goes on
    assert q.dropped == 1000 and rooms == [1000]
    q.write(b"still stuck\n")
    loop.run_once(timeout=0)
    assert q.dropped == 1012 and q.pending() == 0  # no waiting while it stays stuck
    sink.blocked = False
    q.write(b"back\n")
    loop.run_once(timeout=0)
    assert bytes(sink.got) == b"back\n"
    sink.blocked = True
    q.write(b"slow again\n")  # a sink that read once is waited for again
    loop.run_once(timeout=0)
    assert q.pending() == 11 and q.dropped == 1012


def test_no_sink_drops_and_counts_without_holding_the_guest_back(loop) -> None:
    sink = Sink()
    sink.absent = True
    q = make(loop, sink, limit=100, gap=0)
    for _ in range(50):
        assert q.write(b"nobody listens\n") == 15
        loop.run_once(timeout=0)
    assert q.dropped == 750 and q.refused == 0 and q.room() == 100


def test_a_failed_sink_drops_and_reports_it_gone(loop) -> None:
    sink = Sink()
    gone = []
    q = OutputQueue(sink.send, name="t", on_gone=lambda: gone.append(True))
    q.attach(loop)
    sink.error = errno.EPIPE
    q.write(b"to a closed pipe\n")
    loop.run_once(timeout=0)
    assert gone == [True] and q.dropped == 17 and q.pending() == 0


def test_bytes_queued_before_attach_go_out_at_the_first_turn(loop) -> None:
    sink = Sink()
    q = OutputQueue(sink.send, name="t")
    q.write(b"early ")
    q.write(b"bytes")
    q.attach(loop)
    loop.run_once(timeout=0)
    assert bytes(sink.got) == b"early bytes"


def test_close_writes_what_waits_and_gives_a_slow_sink_time() -> None:
    sink = Sink()
    q = OutputQueue(sink.send, name="t", retry=0.01)
    q.write(b"last words")
    sink.blocked = True
    threading.Timer(0.1, lambda: setattr(sink, "blocked", False)).start()
    q.close(drain=5)
    assert bytes(sink.got) == b"last words" and q.dropped == 0
    assert q.write(b"after close") == 0 and q.room() == 0


def test_close_gives_up_on_a_stuck_sink_after_the_drain_time() -> None:
    sink = Sink()
    sink.blocked = True
    q = OutputQueue(sink.send, name="t", retry=0.01)
    q.write(b"y" * 500)
    start = time.monotonic()
    q.close(drain=0.1)
    assert 0.1 <= time.monotonic() - start < 2
    assert q.dropped == 500 and q.pending() == 0


def test_a_writer_thread_and_the_loop_thread_through_a_real_pipe_keep_order() -> None:
    """Every byte arrives in order while a writer races the loop, over a pipe a reader drains
    slowly (back-pressure), and the queue never holds more than its limit."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    q = OutputQueue(lambda d: os.write(w, d), name="pipe", limit=4096, retry=0.002, stall=30)
    loop = EventLoop("pipe")
    q.attach(loop)
    text = b"".join(b"%06d abcdefghijklmnopqrstuvwxyz\n" % i for i in range(20000))
    got = bytearray()
    worst = [0]

    def read() -> None:
        while len(got) < len(text):
            got.extend(os.read(r, 1000))
            time.sleep(0.0002)

    def write() -> None:
        pos = 0
        while pos < len(text):
            n = q.write(text[pos : pos + 37])
            worst[0] = max(worst[0], q.pending())
            pos += n
            if n == 0:
                time.sleep(0.0005)  # the guest waits for THRE

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    t_loop = threading.Thread(target=loop.run)
    t_loop.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    loop.stop()
    t_loop.join(5)
    q.close()
    loop.close()
    os.close(r)
    os.close(w)
    assert bytes(got) == text
    assert worst[0] <= 4096 and q.dropped == 0

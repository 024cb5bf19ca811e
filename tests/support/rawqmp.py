"""A hand-driven QMP client over a raw unix socket, for what a real client library never sends,
and the responsiveness probe the hostile-client tests end every case with."""

from __future__ import annotations

import json
import socket
import time


class Raw:
    """One connection: ``line()`` reads one JSON line, ``ask()`` sends and returns the next
    reply (events skipped), ``send()`` writes raw bytes."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    @classmethod
    def over(cls, sock: socket.socket) -> Raw:
        """Wrap an already connected socket."""
        r = cls.__new__(cls)
        r.s, r.buf = sock, b""
        return r

    def line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def ask(self, data: bytes) -> dict:
        self.send(data)
        reply = self.line()
        while "event" in reply:
            reply = self.line()
        return reply

    def closed(self) -> bool:
        """True once the server hung up (False if it is merely silent or reset us)."""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.s.close()


def probe(path: str) -> float:
    """Seconds a fresh client needs for the greeting and an answered ``query-status``."""
    t0 = time.perf_counter()
    r = Raw(path)
    try:
        r.line()
        reply = r.ask(b'{"execute":"query-status","id":"probe"}\n')
    finally:
        r.close()
    assert reply.get("id") == "probe" and "return" in reply, reply
    return time.perf_counter() - t0


def responsive(path: str, within: float = 0.1, tries: int = 3) -> float:
    """The best of ``tries`` probes, which must come in ``within`` seconds (issue 13: 100 ms)
    so that one scheduling hiccup on a shared host is not a failure; a wedged server takes
    seconds or forever every time."""
    best = min(probe(path) for _ in range(tries))
    assert best <= within, f"a fresh client needed {best * 1000:.0f} ms for query-status"
    return best


def simultaneous(path: str, n: int = 200) -> list[object]:
    """``n`` clients connect at the same instant, each asks ``query-status`` once and leaves;
    returns each one's reply id ("x") or the exception it met."""
    import threading

    results: list[object] = []
    gate = threading.Barrier(n)

    def one() -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            gate.wait()
            s.connect(path)
            r = Raw.over(s)
            r.line()
            results.append(r.ask(b'{"execute":"query-status","id":"x"}\n').get("id"))
            s.close()
        except Exception as exc:  # every failure is the caller's to report
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results

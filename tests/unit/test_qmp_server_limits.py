"""The QMP server against clients that misbehave on purpose (issue 13, items 6-9 and 11).

Real unix sockets and a real server on its own loop thread; the VM is the in-test ``FakeVm``
(the same cases run against the engine process in ``tests/kvm/test_qmp_hostile.py``). After a
hostile case, ``responsive`` checks what matters: a fresh connection still gets ``query-status``
answered within 100 ms.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakevm import FakeVm
from rawqmp import Raw, responsive, simultaneous

from engine.qmp import server as server_mod
from engine.qmp.ratelimit import QUIET, Admission
from engine.qmp.server import MAX_CLIENTS, OUTPUT_CAP, QmpServer
from launcher.errors import HostError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vm() -> Iterator[FakeVm]:
    v = FakeVm()
    yield v
    v.close()


@pytest.fixture
def server(tmp_path, vm: FakeVm) -> Iterator[QmpServer]:
    srv = QmpServer(vm, [str(tmp_path / "qmp.sock")])
    vm.sink = srv
    srv.start()
    yield srv
    srv.close()


def path_of(srv: QmpServer) -> str:
    return srv.paths[0]


# -- item 6: an unparsable document gets an error, and the connection recovers -----------------


def test_unterminated_document_is_answered_and_the_connection_recovers(server) -> None:
    r = Raw(path_of(server))
    r.line()
    r.send(b'{"execute": "query-status", oops\n')
    err = r.line()
    assert err["error"]["class"] == "GenericError" and "Invalid JSON" in err["error"]["desc"]
    assert r.ask(b'{"execute":"query-status","id":1}\n')["id"] == 1
    r.send(b'{"execute": "query-status"\n')  # never closed; the next line starts over
    r.send(b'{"execute":"query-status","id":2}\n')
    assert "error" in r.line()
    assert r.line()["id"] == 2
    responsive(path_of(server))


# -- item 7: clients that never read cannot stall the loop --------------------------------------


def test_fifteen_clients_that_never_read_do_not_stall_the_server(server) -> None:
    sinks = []
    for _ in range(MAX_CLIENTS - 1):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path_of(server))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        sinks.append(s)
    flood = b'{"execute":"qmp_capabilities"}\n' + b'{"execute":"query-status"}\n' * 3000
    for s in sinks:
        try:
            s.send(flood)  # as much as the socket takes; they never read a byte
        except BlockingIOError:
            pass
    watcher = Raw(path_of(server))
    watcher.line()
    watcher.ask(b'{"execute":"qmp_capabilities"}\n')
    # Events pile up for every client: the non-readers' buffers pass the cap and they are
    # dropped; the reader keeps getting answers quickly the whole time.
    worst = 0.0
    for i in range(400):
        server.emit("BALLOON_CHANGED", {"actual": i, "pad": "x" * 8000})
        if i % 40 == 0:
            t0 = time.perf_counter()
            reply = watcher.ask(b'{"execute":"query-status","id":"w"}\n')
            while reply.get("id") != "w":
                reply = watcher.line()  # events first
            worst = max(worst, time.perf_counter() - t0)
    deadline = time.monotonic() + 5
    while server.client_count > 1 and time.monotonic() < deadline:
        while True:  # drain the watcher's events so that it is not dropped itself
            watcher.s.settimeout(0.05)
            try:
                if not watcher.s.recv(1 << 20):
                    break
            except TimeoutError:
                break
        time.sleep(0.05)
    assert server.client_count == 1, "clients over the output cap must be dropped"
    assert worst < 1.0, f"a reading client waited {worst:.2f} s while others did not read"
    for s in sinks:
        s.close()
    watcher.close()
    responsive(path_of(server))


def test_a_client_that_sends_but_never_reads_is_paused_not_buffered(server) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path_of(server))
    s.setblocking(False)
    sent = 0
    chunk = b'{"execute":"query-kvm"}\n' * 1000
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)  # the server stopped reading us: back-pressure, not buffering
            if sent > 4 * OUTPUT_CAP:
                break
    [client] = [c for c in server._clients.values()]
    assert len(client.out) <= OUTPUT_CAP and not client.reading
    responsive(path_of(server))
    s.close()


# -- item 8: EMFILE, fds per client, netdev_add fds ---------------------------------------------

EMFILE_SERVER = """
import os, resource, sys, time
sys.path[:0] = [{root!r}, {support!r}]
from fakevm import FakeVm
from rawqmp import Raw, responsive, simultaneous
from engine.qmp.server import QmpServer
srv = QmpServer(FakeVm(), [sys.argv[1]])
srv.start()
time.sleep(0.2)
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 3, used + 3))
print("ready", flush=True)
sys.stdin.read()
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_at_emfile_backs_off_instead_of_spinning(tmp_path) -> None:
    sock = str(tmp_path / "q.sock")
    code = EMFILE_SERVER.format(root=str(ROOT), support=str(ROOT / "tests" / "support"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, sock],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        clients = [Raw(sock) for _ in range(8)]  # more than the descriptors left
        served = []
        for c in clients:
            c.s.settimeout(0.3)
            try:
                c.line()
                served.append(c)
            except (TimeoutError, EOFError):
                pass
        assert 0 < len(served) < len(clients)
        cpu0 = _cpu_seconds(proc.pid)
        time.sleep(1.0)
        spent = _cpu_seconds(proc.pid) - cpu0
        assert spent < 0.3, f"the server burned {spent:.2f} s of CPU in 1 s at EMFILE"
        for c in served:  # descriptors come free: the waiting clients are accepted
            c.close()
        waiting = [c for c in clients if c not in served]
        waiting[0].s.settimeout(5)
        waiting[0].line()
        assert waiting[0].ask(b'{"execute":"query-status","id":9}\n')["id"] == 9
        for c in waiting:
            c.close()
    finally:
        proc.communicate(b"", timeout=10)
    assert proc.stderr is not None
    log = proc.stderr.read() if not proc.stderr.closed else b""
    assert len(log) < 10_000 and b"Traceback" not in log


def _send_fd(r: Raw, fd: int, payload: bytes = b" ") -> None:
    socket.send_fds(r.s, [payload], [fd])


def test_named_fds_are_capped_per_client_and_closed_with_it(server) -> None:
    from engine.qmp.control import ClientFds

    r = Raw(path_of(server))
    r.line()
    rd, wr = os.pipe()
    _send_fd(r, wr, b'{"execute":"getfd","arguments":{"fdname":"pipe"}}\n')
    os.close(wr)
    assert r.line() == {"return": {}}
    for i in range(ClientFds.MAX_NAMED - 1):
        f = os.open("/dev/null", os.O_RDONLY)
        _send_fd(r, f, b'{"execute":"getfd","arguments":{"fdname":"n%d"}}\n' % i)
        os.close(f)
        assert r.line() == {"return": {}}
    f = os.open("/dev/null", os.O_RDONLY)
    _send_fd(r, f, b'{"execute":"getfd","arguments":{"fdname":"one-too-many"}}\n')
    os.close(f)
    assert "Too many named file descriptors" in r.line()["error"]["desc"]
    assert r.ask(b'{"execute":"closefd","arguments":{"fdname":"n0"}}\n') == {"return": {}}
    os.set_blocking(rd, False)
    with pytest.raises(BlockingIOError):
        os.read(rd, 1)  # the server still holds the write end
    r.close()
    deadline = time.monotonic() + 5
    while True:  # the client is gone: its named fds are closed, the pipe reads EOF
        try:
            assert os.read(rd, 1) == b""
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the client's fds outlived it"
            time.sleep(0.02)
    os.close(rd)


def test_netdev_add_uses_only_fds_this_client_passed(server, vm: FakeVm) -> None:
    engine_fd = os.open("/dev/null", os.O_RDONLY)  # the server runs in this process: ours
    a, b = Raw(path_of(server)), Raw(path_of(server))
    a.line()
    b.line()
    reply = a.ask(b'{"execute":"netdev_add","arguments":{"id":"n","fds":"%d"}}\n' % engine_fd)
    assert "has not been found" in reply.get("error", {}).get("desc", ""), reply
    f = os.open("/dev/null", os.O_RDONLY)
    _send_fd(b, f, b'{"execute":"getfd","arguments":{"fdname":"bs"}}\n')
    os.close(f)
    assert b.line() == {"return": {}}
    reply = a.ask(b'{"execute":"netdev_add","arguments":{"id":"n","fds":"bs"}}\n')
    assert "has not been found" in reply["error"]["desc"]  # b's fd is b's
    assert "n" not in vm.netdevs
    os.fstat(engine_fd)  # untouched
    os.close(engine_fd)
    responsive(path_of(server))
    a.close()
    b.close()


# -- item 9: what the serde decoder refuses ------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b'{"execute":"query-status","execute":"quit"}\n',
        b'{"execute":"quit","id":"\\ud800"}\n',
        b'{"execute":"quit","id":1e999}\n',
        b'{"execute":"quit","arguments":{"x":"\\udc00"}}\n',
    ],
)
def test_decoder_refusals_get_an_error_and_never_run_the_command(server, vm, bad) -> None:
    r = Raw(path_of(server))
    r.line()
    err = r.ask(bad)
    assert err["error"]["class"] == "GenericError" and "id" not in err
    assert not vm.quit_called.is_set()
    assert r.ask(b'{"execute":"query-status","id":"ok"}\n')["id"] == "ok"
    r.close()


# -- item 11: backlog and per-VM rate limits ------------------------------------------------------


def test_two_hundred_simultaneous_connects_are_all_served(server) -> None:
    results = simultaneous(path_of(server), 200)
    failures = [r for r in results if r != "x"]
    assert not failures and len(results) == 200, failures[:5]


def test_the_rate_limit_is_per_vm_and_a_quiet_client_still_gets_through() -> None:
    now = [0.0]
    adm = Admission(sockets=1, clock=lambda: now[0])
    clients = [adm.client_bucket() for _ in range(5)]
    admitted = [sum(adm.admit(c) for _ in range(100)) for c in clients]
    assert admitted[0] == 100  # one client: StratoVirt's 100 per second
    assert all(n == QUIET for n in admitted[1:])  # the others: only while they are quiet
    assert sum(admitted) <= 100 + len(clients) * QUIET  # not N x 100
    quiet = adm.client_bucket()
    assert adm.admit(quiet), "a client sending its first command is never locked out"
    now[0] += 1.0
    assert sum(adm.admit(clients[0]) for _ in range(200)) == 100  # drained: a fresh second


def test_clients_over_the_cap_wait_in_the_backlog_and_are_served_later(server) -> None:
    held = [Raw(path_of(server)) for _ in range(MAX_CLIENTS)]
    for r in held:
        r.line()
    late = Raw(path_of(server), timeout=0.3)
    with pytest.raises(TimeoutError):
        late.line()  # connected, queued: no greeting until a slot frees
    held.pop().close()
    late.s.settimeout(5)
    late.line()
    assert late.ask(b'{"execute":"query-status","id":1}\n')["id"] == 1
    for r in [*held, late]:
        r.close()


# -- the socket: 0600 from the start, and only our own file is unlinked --------------------------


def test_socket_mode_and_only_the_bound_socket_is_unlinked(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    old = os.umask(0)
    try:
        first = QmpServer(FakeVm(), [path])
        first.start()
    finally:
        os.umask(old)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        second = QmpServer(FakeVm(), [path])
        with pytest.raises(HostError, match="in use"):
            second.start()
        second.close()  # a server that never bound must not remove the first one's socket
        assert os.path.exists(path)
        responsive(path)
        # Someone replaces the file: at exit the first server leaves the new one alone.
        os.rename(path, path + ".moved")
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
    finally:
        first.close()
    assert os.path.exists(path), "the server unlinked a socket file it did not create"
    other.close()


def test_a_stale_socket_is_replaced_only_when_nobody_listens(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    srv = QmpServer(FakeVm(), [path])
    srv.start()
    responsive(path)
    srv.close()
    assert not os.path.exists(path)
    assert server_mod.BACKLOG >= 200


def test_the_socket_path_appears_only_once_it_accepts(tmp_path) -> None:
    """A client that connects the moment the path exists is never refused (no bind→listen gap)."""
    refused = 0
    for i in range(50):
        path = str(tmp_path / f"r{i}.sock")
        stop = threading.Event()
        outcome: list[str] = []

        def watch(path: str = path, stop: threading.Event = stop, out: list = outcome) -> None:
            while not stop.is_set():
                if os.path.exists(path):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(path)
                        out.append("ok")
                    except ConnectionRefusedError:
                        out.append("refused")
                    finally:
                        s.close()
                    return

        t = threading.Thread(target=watch)
        t.start()
        srv = QmpServer(FakeVm(), [path])
        srv.start()
        t.join(5)
        stop.set()
        srv.close()
        refused += outcome.count("refused")
    assert refused == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".qmp-")]  # no staging left

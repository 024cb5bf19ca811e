"""The hostile-client suite: one real engine process, every misbehaviour a QMP client can try.

``python -m engine`` runs a tiny guest (it halts in a loop) with a drive, empty hot-plug slots,
an iothread, a serial file and its seccomp filters on, as ``svlaunch up`` would start it. Each
case below is one hostile client (or a crowd of them). After every case the suite checks what
issue 13 asks: a fresh connection gets ``query-status`` answered within 100 ms, the engine is
alive, and it holds no more file descriptors than before the case (nothing leaked). At the end
the engine quits cleanly (exit 0) and its stderr holds no traceback: no user input reached one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rawqmp import Raw, probe, responsive, simultaneous
from tiny_guest import HANG, make_plan, say, write_guest

from engine.__main__ import engine_argv
from engine.machine.layout import virtio_mmio_slot
from engine.plan import BlkPlan, SlotPlan

pytestmark = pytest.mark.kvm


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    path: str
    tmp: Path
    stderr: Path
    disk: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> set[str]:
        return set(os.listdir(f"/proc/{self.pid}/fd"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("hostile")
    disk = tmp / "disk0.img"
    disk.write_bytes(b"\0" * (1 << 20))
    plan = make_plan(write_guest(tmp, say(b"up\n") + HANG), serial_file=tmp / "serial")
    devices: list = []
    for i in range(4):
        base, irq = virtio_mmio_slot(i)
        if i == 0:
            devices.append(
                BlkPlan(id="disk0", mmio_base=base, irq=irq, file=str(disk), direct=False,
                        aio="off", iothread="io0", drive_id="drive0")
            )  # fmt: skip
        else:
            devices.append(SlotPlan(id=f"blk-slot{i}", mmio_base=base, irq=irq, accepts="blk"))
    for i in range(2):
        base, irq = virtio_mmio_slot(4 + i)
        devices.append(SlotPlan(id=f"net-slot{i}", mmio_base=base, irq=irq, accepts="net"))
    qmp = tmp / "qmp.sock"
    plan = dataclasses.replace(
        plan,
        name="hostile",
        devices=tuple(devices),
        iothreads=("io0",),
        qmp=(str(qmp),),
        seccomp=True,
    )
    plan_file = tmp / "plan.json"
    plan_file.write_text(plan.dumps())
    stderr = tmp / "engine.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(engine_argv(str(plan_file)), stdin=subprocess.DEVNULL, stderr=err)
    end = time.monotonic() + 30
    while not qmp.exists():
        assert proc.poll() is None and time.monotonic() < end, stderr.read_text()[-2000:]
        time.sleep(0.02)
    e = Engine(proc, str(qmp), tmp, stderr, disk)
    try:
        probe(e.path)  # the server's lazily made parts (its back-off timer) exist from here on
        yield e
        r = Raw(e.path)
        r.line()
        assert r.ask(b'{"execute":"quit"}\n') == {"return": {}}
        assert proc.wait(15) == 0
        log = stderr.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert not qmp.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the cases ------------------------------------------------------------------------------------


def unterminated_document(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    r.s.sendall(b'{"execute": "query-status", oops\n')
    assert r.line()["error"]["class"] == "GenericError"
    r.s.sendall(b'{"execute": "query-status"\n')
    assert "error" in r.ask(b'{"execute":"query-status","id":1}\n')
    assert r.line()["id"] == 1
    r.close()


def garbage_bytes(e: Engine) -> None:
    rnd = random.Random(13)
    r = Raw(e.path)
    r.line()
    r.s.sendall(bytes(rnd.getrandbits(8) for _ in range(64 << 10)))
    r.s.sendall(b'\n{"execute":"query-status","id":"a"}\n{"execute":"query-status","id":"b"}\n')
    ids = []
    while "b" not in ids:
        ids.append(r.line().get("id"))
    r.close()


def _refused_then_served(e: Engine, data: bytes, words: str) -> None:
    r = Raw(e.path)
    r.line()
    r.send(data)
    assert words in r.line()["error"]["desc"]
    assert r.ask(b'{"execute":"query-status","id":1}\n')["id"] == 1
    r.close()


def deep_nesting(e: Engine) -> None:
    _refused_then_served(e, b"[" * 100_000 + b"\n", "nesting")


def oversized_message(e: Engine) -> None:
    _refused_then_served(
        e, b'{"execute":"query-status","id":"' + b"x" * 300_000 + b'"}\n', "too long"
    )


def decoder_refusals(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    for bad in (
        b'{"execute":"query-status","execute":"quit"}\n',
        b'{"execute":"quit","id":"\\ud800"}\n',
        b'{"execute":"quit","arguments":{"\\udfff":1}}\n',
        b'{"execute":"quit","id":1e999}\n',
        b'{"execute":"quit","id":' + b"9" * 4000 + b"}\n",
        b'{"execute":"quit","id":"\xff\xfe"}\n',
        b'{"execute":"quit","id":NaN}\n',
    ):
        reply = r.ask(bad)
        assert reply["error"]["class"] == "GenericError" and "id" not in reply, reply
    assert r.ask(b'{"execute":"query-status"}\n')["return"]["status"] == "running"
    r.close()


def bad_commands(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    for bad in (
        b'{"execute":"no-such"}\n',
        b'{"execute":42}\n',
        b'{"execute":"balloon","arguments":{"value":-1}}\n',
        b'{"execute":"device_add","arguments":{"id":1}}\n',
        b'{"execute":"device_add","arguments":{"id":"x","driver":"virtio-blk-device","addr":"zz"}}\n',
        b'{"execute":"blockdev-add","arguments":{"node-name":"n","file":[]}}\n',
        b'{"execute":"query-status","arguments":[1]}\n',
        b'[{"execute":"quit"}]\n',
        b'"quit"\n',
        b'{"execute":"block-commit","arguments":{"device":"drive0"}}\n',
        b'{"execute":"migrate","arguments":{"uri":"tcp:1.2.3.4:5"}}\n',
        b'{"execute":"device_del","arguments":{"id":"serial0"}}\n',
    ):
        assert "error" in r.ask(bad), bad
    r.close()


def never_reading_clients(e: Engine) -> None:
    crowd = []
    for _ in range(15):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(e.path)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.send(b'{"execute":"query-commands"}\n' * 5000)
        crowd.append(s)
    for _ in range(5):
        assert probe(e.path) < 0.5
    for s in crowd:
        s.close()


def two_hundred_connects(e: Engine) -> None:
    ok = simultaneous(e.path, 200)
    assert ok.count("x") == 200, [x for x in ok if x != "x"][:3]


def connect_churn(e: Engine) -> None:
    for i in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(e.path)
        if i % 3 == 0:
            s.sendall(b'{"execute":"query-status"}\n')
        s.close()


def half_close(e: Engine) -> None:
    r = Raw(e.path)
    r.s.sendall(b'{"execute":"query-status","id":"h"}\n')
    r.s.shutdown(socket.SHUT_WR)
    r.line()  # greeting
    assert r.line()["id"] == "h"  # answered although the client stopped sending
    r.close()


def slow_partial_client(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    r.s.sendall(b'{"execute": "query-sta')  # and then nothing, for a while
    assert probe(e.path) < 1.0
    r.s.sendall(b'tus", "id": 3}\n')
    assert r.line()["id"] == 3
    r.close()


def command_flood(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    r.s.sendall(b'{"execute":"query-kvm"}\n' * 3000)
    replies = [r.line() for _ in range(3000)]
    throttled = sum(1 for x in replies if x.get("error", {}).get("class") == "OperationThrottled")
    assert throttled >= 2000  # the VM-wide 100/s holds
    r.close()


def many_clients_share_the_rate(e: Engine) -> None:
    clients = [Raw(e.path) for _ in range(5)]
    for c in clients:
        c.line()
    for c in clients:
        c.s.sendall(b'{"execute":"query-kvm"}\n' * 100)
    admitted = 0
    for c in clients:
        admitted += sum(1 for _ in range(100) if "return" in c.line())
    assert admitted < 300, f"{admitted} of 500 admitted: the limit is not per VM"
    for c in clients:
        c.close()


def fd_passing(e: Engine) -> None:
    time.sleep(1.0)  # a full second of rate budget for the 40 commands below
    r = Raw(e.path)
    r.line()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
    socket.send_fds(r.s, [b" "], fds)  # more than one message may carry: the rest is dropped
    for fd in fds:
        os.close(fd)
    replies = []
    for i in range(40):
        f = os.open("/dev/null", os.O_RDONLY)
        socket.send_fds(r.s, [b'{"execute":"getfd","arguments":{"fdname":"f%d"}}\n' % i], [f])
        os.close(f)
        replies.append(r.line())
    named = sum("return" in x for x in replies)
    assert named == 16, replies  # 16 queued from the big message, 16 of them named: the caps
    r.close()


def engine_fd_numbers(e: Engine) -> None:
    time.sleep(1.0)  # a full second of rate budget for the 80 commands below
    r = Raw(e.path)
    r.line()
    before = e.fds()
    for n in sorted(int(x) for x in before)[:40]:
        reply = r.ask(b'{"execute":"netdev_add","arguments":{"id":"n%d","fds":"%d"}}\n' % (n, n))
        assert "has not been found" in reply["error"]["desc"], reply
        reply = r.ask(b'{"execute":"netdev_del","arguments":{"id":"n%d"}}\n' % n)
        assert "error" in reply
    assert e.fds() >= before - {str(r.s.fileno())}
    r.close()


def non_tap_fd(e: Engine) -> None:
    """A descriptor that is not a tap, passed for a NIC: refused, and nothing of it kept."""
    r = Raw(e.path)
    r.line()
    f = os.open("/dev/null", os.O_RDONLY)
    socket.send_fds(r.s, [b'{"execute":"getfd","arguments":{"fdname":"nt"}}\n'], [f])
    os.close(f)
    assert r.line() == {"return": {}}
    assert "return" in r.ask(b'{"execute":"netdev_add","arguments":{"id":"nt","fds":"nt"}}\n')
    for _ in range(3):
        dev = b'{"execute":"device_add","arguments":{"id":"nt","driver":"virtio-net-device","addr":"0x1"}}\n'
        assert "not a tap device" in r.ask(dev)["error"]["desc"]
    assert "return" in r.ask(b'{"execute":"netdev_del","arguments":{"id":"nt"}}\n')
    r.close()


def hostile_files(e: Engine) -> None:
    fifo = e.tmp / "evil.fifo"
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo)
    link = e.tmp / "evil.link"  # a link is followed: to a FIFO, it is refused as a FIFO
    with contextlib.suppress(FileExistsError):
        link.symlink_to(fifo)
    r = Raw(e.path)
    r.line()
    for i, path in enumerate((fifo, "/proc/self/mem", "/dev/zero", link, e.tmp, "/nonexistent")):
        t0 = time.perf_counter()
        reply = r.ask(
            json.dumps(
                {"execute": "blockdev-add",
                 "arguments": {"node-name": f"evil{i}", "file": {"filename": str(path)}}}
            ).encode() + b"\n"
        )  # fmt: skip
        assert "error" in reply and time.perf_counter() - t0 < 2, (path, reply)
    swap = e.tmp / "swap.img"
    swap.write_bytes(b"\0" * 4096)
    cmd = {"node-name": "swap", "file": {"filename": str(swap)}}
    assert "return" in r.ask(
        json.dumps({"execute": "blockdev-add", "arguments": cmd}).encode() + b"\n"
    )
    swap.unlink()
    os.mkfifo(swap)
    dev = {"id": "swap", "driver": "virtio-blk-device", "addr": "0x2"}
    reply = r.ask(json.dumps({"execute": "device_add", "arguments": dev}).encode() + b"\n")
    assert "FIFO" in reply["error"]["desc"]
    assert "return" in r.ask(b'{"execute":"blockdev-del","arguments":{"node-name":"swap"}}\n')
    reply = r.ask(b'{"execute":"netdev_add","arguments":{"id":"t","ifname":"evil%d"}}\n')
    assert "numbered tap" in reply["error"]["desc"]
    r.close()


def real_answers(e: Engine) -> None:
    r = Raw(e.path)
    r.line()
    [blk] = r.ask(b'{"execute":"query-block"}\n')["return"]
    assert blk["device"] == "drive0" and blk["qdev"] == "disk0"
    assert blk["inserted"]["file"] == str(e.disk)
    assert blk["inserted"]["image"]["virtual-size"] == 1 << 20
    [stats] = r.ask(b'{"execute":"query-blockstats"}\n')["return"]
    assert stats["stats"]["wr_operations"] == 0 and stats["device"] == "drive0"
    [io] = r.ask(b'{"execute":"query-iothreads"}\n')["return"]
    assert os.path.exists(f"/proc/{e.pid}/task/{io['thread-id']}")
    chardevs = r.ask(b'{"execute":"query-chardev"}\n')["return"]
    assert {
        "label": "serial0",
        "filename": f"file:{e.tmp / 'serial'}",
        "frontend-open": True,
    } in chardevs
    assert "error" in r.ask(b'{"execute":"block-commit"}\n')
    r.close()


def emfile(e: Engine) -> None:
    """The engine runs out of descriptors: accepting backs off instead of spinning."""
    soft, hard = resource.prlimit(e.pid, resource.RLIMIT_NOFILE)
    used = len(e.fds())
    resource.prlimit(e.pid, resource.RLIMIT_NOFILE, (used + 2, hard))
    try:
        clients = [Raw(e.path, timeout=0.3) for _ in range(6)]
        time.sleep(0.2)
        cpu0 = _cpu(e.pid)
        time.sleep(1.0)
        assert _cpu(e.pid) - cpu0 < 0.3, "the engine spins at EMFILE"
    finally:
        resource.prlimit(e.pid, resource.RLIMIT_NOFILE, (soft, hard))
    for c in clients:
        c.close()
    assert e.stderr.read_text(errors="replace").count("cannot accept") <= 2


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CASES: list[Callable[[Engine], None]] = [
    unterminated_document,
    garbage_bytes,
    deep_nesting,
    oversized_message,
    decoder_refusals,
    bad_commands,
    never_reading_clients,
    two_hundred_connects,
    connect_churn,
    half_close,
    slow_partial_client,
    command_flood,
    many_clients_share_the_rate,
    fd_passing,
    engine_fd_numbers,
    non_tap_fd,
    hostile_files,
    real_answers,
    emfile,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_hostile_client(engine: Engine, case: Callable[[Engine], None]) -> None:
    baseline = engine.fds()
    case(engine)
    assert engine.proc.poll() is None, engine.stderr.read_text()[-2000:]
    responsive(engine.path)  # a fresh client: query-status answered within 100 ms
    deadline = time.monotonic() + 3
    while engine.fds() - baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.fds() - baseline, f"{case.__name__}: the engine kept descriptors"

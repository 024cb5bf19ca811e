"""The QMP socket server, driven by qemu.qmp (a real client nobody here wrote) and raw sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Iterator

import pytest
from fakevm import FakeVm
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError
from rawqmp import Raw

from engine.qmp.commands import HANDLERS, REFUSED
from engine.qmp.server import QmpServer
from launcher.errors import HostError

GREETING = (
    b'{"QMP":{"version":{"qemu":{"micro":1,"minor":0,"major":5},"package":""},'
    b'"capabilities":[]}}\r\n'
)


@pytest.fixture
def vm() -> FakeVm:
    return FakeVm()


@pytest.fixture
def server(tmp_path, vm: FakeVm) -> Iterator[QmpServer]:
    srv = QmpServer(vm, [str(tmp_path / "qmp.sock")])
    vm.sink = srv
    srv.start()
    yield srv
    srv.close()


def sock_path(server: QmpServer) -> str:
    return server.paths[0]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def connect(path: str) -> QMPClient:
    q = QMPClient("test")
    await q.connect(path)
    return q


def test_exact_greeting_and_socket_mode(server: QmpServer) -> None:
    r = Raw(sock_path(server))
    r.s.settimeout(5)
    data = b""
    while not data.endswith(b"\r\n"):
        data += r.s.recv(4096)
    assert data == GREETING
    assert stat.S_IMODE(os.stat(sock_path(server)).st_mode) == 0o600


def test_lifecycle_with_qemu_qmp(server: QmpServer, vm: FakeVm) -> None:
    async def go() -> None:
        q = await connect(sock_path(server))
        assert await q.execute("query-status") == {
            "running": True,
            "singlestep": False,
            "status": "running",
        }
        with q.listener("STOP") as listener:
            assert await q.execute("stop") == {}
            ev = await asyncio.wait_for(listener.get(), 5)
        assert ev["event"] == "STOP" and set(ev["timestamp"]) == {"seconds", "microseconds"}
        assert abs(ev["timestamp"]["seconds"] - time.time()) < 10
        with pytest.raises(ExecuteError) as err:
            await q.execute("stop")
        assert err.value.error_class == "GenericError" and str(err.value) == ""
        assert (await q.execute("query-status"))["status"] == "paused"
        await q.execute("cont")
        cpus = await q.execute("query-cpus")
        assert [c["CPU"] for c in cpus] == [0, 1]
        assert cpus[0]["qom_path"] == "/machine/unattached/device[0]"
        await q.disconnect()

    run(go())


def test_errors_have_the_right_class(server: QmpServer, vm: FakeVm) -> None:
    async def go() -> None:
        q = await connect(sock_path(server))
        with pytest.raises(ExecuteError) as err:
            await q.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"
        with pytest.raises(ExecuteError) as err:
            await q.execute("balloon", {"value": "lots"})
        assert err.value.error_class == "GenericError"
        assert "'value'" in str(err.value)
        with pytest.raises(ExecuteError) as err:
            await q.execute("balloon", {"value": 1, "extra": 2})
        assert "'extra' is unexpected" in str(err.value)
        vm.balloon = None
        with pytest.raises(ExecuteError) as err:
            await q.execute("query-balloon")
        assert err.value.error_class == "DeviceNotActive"
        with pytest.raises(ExecuteError) as err:
            await q.execute("device_del", {"id": "nope"})
        assert err.value.error_class == "DeviceNotFound"
        # The session survives all of that.
        assert (await q.execute("query-status"))["running"] is True
        await q.disconnect()

    run(go())


def test_every_command_answers(server: QmpServer) -> None:
    async def go() -> None:
        q = await connect(sock_path(server))
        names = {c["name"] for c in await q.execute("query-commands")}
        assert names == set(HANDLERS) - REFUSED
        for required in ("query-status", "device_add", "blockdev-add", "netdev_add", "getfd"):
            assert required in names
        assert (await q.execute("query-version"))["qemu"] == {"micro": 1, "minor": 0, "major": 5}
        assert await q.execute("query-kvm") == {"enabled": True, "present": True}
        assert await q.execute("query-target") == {"arch": "x86_64"}
        assert await q.execute("query-block") == []
        await q.disconnect()

    run(go())


def test_hot_replace_blk_and_net_as_the_guidebook_shows(server: QmpServer, vm: FakeVm) -> None:
    async def go() -> None:
        q = await connect(sock_path(server))
        await q.execute(
            "blockdev-add",
            {
                "node-name": "drive-0",
                "file": {"driver": "file", "filename": "/path/to/block"},
                "cache": {"direct": True},
                "read-only": False,
            },
        )
        await q.execute("device_add", {"id": "drive-0", "driver": "virtio-blk-mmio", "addr": "0x1"})
        assert vm.devices["drive-0"].slot == 1 and vm.devices["drive-0"].kind == "blk"
        assert vm.blockdevs["drive-0"].filename == "/path/to/block"
        with pytest.raises(ExecuteError, match="out of range"):
            await q.execute(
                "device_add", {"id": "drive-0", "driver": "virtio-blk-mmio", "addr": "0x4"}
            )
        await q.execute("netdev_add", {"id": "net-0", "ifname": "tap0"})
        await q.execute("device_add", {"id": "net-0", "driver": "virtio-net-mmio", "addr": "0x0"})
        with q.listener("DEVICE_DELETED") as listener:
            await q.execute("device_del", {"id": "net-0"})
            ev = await asyncio.wait_for(listener.get(), 5)
        assert ev["data"] == {"device": "net-0", "path": "net-0"}
        await q.disconnect()

    run(go())


def test_getfd_receives_the_fd_over_scm_rights(server: QmpServer, vm: FakeVm, tmp_path) -> None:
    target = tmp_path / "f"
    target.write_text("x")

    async def go() -> None:
        q = await connect(sock_path(server))
        with pytest.raises(ExecuteError, match="Invalid SCM message"):
            await q.execute("getfd", {"fdname": "early"})
        fd = os.open(target, os.O_RDONLY)
        q.send_fd_scm(fd)
        await q.execute("getfd", {"fdname": "tap-fd"})
        os.close(fd)
        await q.execute("netdev_add", {"id": "n0", "fds": "tap-fd"})
        [got] = vm.netdevs["n0"].fds
        assert os.fstat(got).st_ino == target.stat().st_ino
        await q.disconnect()

    run(go())
    vm.close()


def test_several_clients_all_get_events(server: QmpServer) -> None:
    async def go() -> None:
        a, b = await connect(sock_path(server)), await connect(sock_path(server))
        with a.listener("STOP") as la, b.listener("STOP") as lb:
            await b.execute("stop")
            ea = await asyncio.wait_for(la.get(), 5)
            eb = await asyncio.wait_for(lb.get(), 5)
        assert ea["event"] == eb["event"] == "STOP"
        await a.disconnect()
        await b.disconnect()

    run(go())


def test_quit_replies_then_shutdown_then_vm_quits(server: QmpServer, vm: FakeVm) -> None:
    r = Raw(sock_path(server))
    r.line()
    r.send(b'{"execute":"qmp_capabilities"}\n{"execute":"quit","id":"q"}\n')
    assert r.line() == {"return": {}}
    assert r.line() == {"return": {}, "id": "q"}
    ev = r.line()
    assert ev["event"] == "SHUTDOWN"
    assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert vm.quit_called.wait(5)


def test_bad_input_gets_errors_and_others_keep_being_served(server: QmpServer) -> None:
    r = Raw(sock_path(server))
    r.line()
    r.send(b'{"execute": }\n')
    assert r.line()["error"]["class"] == "GenericError"
    r.send(b'{"execute":"qmp_capabilities","id":1,"oops":2}\n')
    assert r.line() == {
        "error": {"class": "GenericError", "desc": "QMP input member 'oops' is unexpected"},
        "id": 1,
    }
    # An unterminated message past the cap: one error, the rest of its line is skipped.
    r.send(b'{"execute":"x","arguments":{"a":"' + b"y" * 9000)
    assert "too long" in r.line()["error"]["desc"]
    r.send(b'"}}\n{"execute":"query-status","id":"still"}\n')
    assert r.line()["id"] == "still"

    # A client vanishing mid-command.
    gone = Raw(sock_path(server))
    gone.line()
    gone.send(b'{"execute":"stop"}\n')
    gone.s.close()

    async def go() -> None:
        q = await connect(sock_path(server))
        assert "status" in await q.execute("query-status")
        await q.disconnect()

    run(go())


def test_leaky_bucket_throttles_a_burst(server: QmpServer) -> None:
    r = Raw(sock_path(server))
    r.line()
    burst = b"".join(b'{"execute":"query-kvm","id":%d}\n' % i for i in range(150))
    r.send(burst)
    replies = [r.line() for _ in range(150)]
    assert [x["id"] for x in replies] == list(range(150))
    throttled = [x for x in replies if "error" in x]
    assert 30 <= len(throttled) <= 50
    assert throttled[0]["error"] == {
        "class": "OperationThrottled",
        "desc": "More than 100 requests received during 1 second",
    }
    assert all("return" in x for x in replies[:100])


def test_stale_socket_replaced_and_live_socket_refused(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    srv = QmpServer(FakeVm(), [path])
    srv.start()
    try:
        with pytest.raises(HostError, match="in use"):
            QmpServer(FakeVm(), [path]).start()
    finally:
        srv.close()
    assert not os.path.exists(path)
    (tmp_path / "plain").write_text("")
    with pytest.raises(HostError, match="not a socket"):
        QmpServer(FakeVm(), [str(tmp_path / "plain")]).start()


def test_server_on_a_shared_engine_loop(tmp_path) -> None:
    import threading

    from engine.eventloop import EventLoop

    loop = EventLoop("main")
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    vm = FakeVm()
    srv = QmpServer(vm, [str(tmp_path / "q.sock")], loop=loop)
    vm.sink = srv
    srv.start()
    try:

        async def go() -> None:
            q = await connect(srv.paths[0])
            with q.listener("RESET") as listener:
                srv.emit("RESET", {"guest": True})  # from this (foreign) thread
                ev = await asyncio.wait_for(listener.get(), 5)
            assert ev["data"] == {"guest": True}
            await q.disconnect()

        run(go())
    finally:
        srv.close()
        loop.stop()
        t.join(2)

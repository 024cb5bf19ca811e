"""The snapshot files, their checks, the state codec and the restore rules, without KVM."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from tiny_guest import make_plan

from engine.plan import BalloonPlan, BlkPlan, NetPlan, SlotPlan
from engine.snapshot import format as fmt
from engine.snapshot.codec import StateError, from_json, to_json
from engine.snapshot.rules import plan_differences, snapshot_refusals
from engine.snapshot.state import KvmState, MemoryState, RegionState


def write_state(folder: Path, payload: dict) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / fmt.STATE_FILE
    path.write_bytes(fmt.state_bytes(payload))
    return path


GOOD = {"format": fmt.FORMAT, "version": fmt.VERSION, "plan": {"name": "x"}}


def test_state_round_trips_and_every_truncation_or_flip_is_refused(tmp_path: Path) -> None:
    path = write_state(tmp_path, GOOD)
    assert fmt.read_state(str(tmp_path)).payload == GOOD
    data = path.read_bytes()
    for cut in (0, 7, 51, 52, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(fmt.SnapshotError, match="truncated"):
            fmt.read_state(str(tmp_path))
    for at in range(52, len(data)):
        bad = bytearray(data)
        bad[at] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(fmt.SnapshotError, match="corrupted"):
            fmt.read_state(str(tmp_path))
    path.write_bytes(data + b"x")
    with pytest.raises(fmt.SnapshotError, match="longer than its header says"):
        fmt.read_state(str(tmp_path))
    path.write_bytes(b"NOTSNAP\n" + data[8:])
    with pytest.raises(fmt.SnapshotError, match="bad magic"):
        fmt.read_state(str(tmp_path))
    path.write_bytes(data[:8] + (2).to_bytes(4, "little") + data[12:])
    with pytest.raises(fmt.SnapshotError, match="format version 2"):
        fmt.read_state(str(tmp_path))


def test_state_payload_must_be_a_snapshot_document(tmp_path: Path) -> None:
    for payload, words in (
        ({"format": "other", "version": 1}, "not a svlaunch-snapshot document"),
        ({"format": fmt.FORMAT, "version": 9}, "payload version 9"),
    ):
        write_state(tmp_path, payload)
        with pytest.raises(fmt.SnapshotError, match=words):
            fmt.read_state(str(tmp_path))
    import hashlib

    body = b"{not json"
    head = fmt._STATE_HEAD.pack(
        fmt.STATE_MAGIC, fmt.VERSION, len(body), hashlib.sha256(body).digest()
    )
    (tmp_path / fmt.STATE_FILE).write_bytes(head + body)
    with pytest.raises(fmt.SnapshotError, match="not JSON"):
        fmt.read_state(str(tmp_path))
    (tmp_path / fmt.STATE_FILE).unlink()
    (tmp_path / fmt.STATE_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(fmt.SnapshotError, match="cannot open"):
        fmt.read_state(str(tmp_path))


def test_memory_file_checks_id_length_and_size(tmp_path: Path) -> None:
    ident, data = os.urandom(16), os.urandom(3 * 4096)
    import hashlib

    path = tmp_path / fmt.MEMORY_FILE
    path.write_bytes(fmt.memory_header(len(data), ident, hashlib.sha256(data).digest()) + data)
    mf = fmt.open_memory(str(tmp_path), ident, len(data))
    fmt.verify_memory(mf)
    mf.close()
    with pytest.raises(fmt.SnapshotError, match="belongs to another snapshot"):
        fmt.open_memory(str(tmp_path), os.urandom(16), len(data))
    with pytest.raises(fmt.SnapshotError, match="state says"):
        fmt.open_memory(str(tmp_path), ident, len(data) + 4096)
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(fmt.SnapshotError, match="is truncated"):
        fmt.open_memory(str(tmp_path), ident, len(data))
    path.write_bytes(
        fmt.memory_header(len(data), ident, hashlib.sha256(data).digest()) + data[::-1]
    )
    mf = fmt.open_memory(str(tmp_path), ident, len(data))  # the cheap checks pass ...
    with pytest.raises(fmt.SnapshotError, match="SHA-256 does not match"):
        fmt.verify_memory(mf)  # ... reading it all does not
    mf.close()


def test_a_new_snapshot_never_overwrites_and_never_follows_a_symlink(tmp_path: Path) -> None:
    fd = fmt.open_new_folder(str(tmp_path / "new"))
    os.close(fd)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    write_state(tmp_path / "new", GOOD)
    with pytest.raises(fmt.SnapshotError, match="already holds a snapshot"):
        fmt.open_new_folder(str(tmp_path / "new"))
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "target").mkdir()
    with pytest.raises(fmt.SnapshotError, match="is a symlink"):
        fmt.open_new_folder(str(tmp_path / "link"))
    with pytest.raises(fmt.SnapshotError, match="cannot create the folder"):
        fmt.open_new_folder(str(tmp_path / "no" / "such" / "parent"))


def test_codec_checks_every_value_against_its_declaration() -> None:
    mem = MemoryState(
        os.urandom(16), 8192, (RegionState(0, 4096, 0), RegionState(1 << 20, 4096, 4096))
    )
    data = json.loads(json.dumps(to_json(mem)))
    assert from_json(MemoryState, data) == mem
    for broken, words in (
        ({**data, "extra": 1}, "unknown field 'extra'"),
        ({k: v for k, v in data.items() if k != "size"}, "field 'size' is missing"),
        ({**data, "size": "8192"}, "state.size: expected an integer"),
        ({**data, "size": True}, "state.size: expected an integer"),
        ({**data, "id": "not base64!"}, "state.id: not valid base64"),
        ({**data, "regions": {}}, "state.regions: expected a list"),
        ({**data, "regions": [[0, 4096]]}, r"state.regions\[0\]: expected an object"),
    ):
        with pytest.raises(StateError, match=words):
            from_json(MemoryState, broken)
    kvm = KvmState(b"a", b"b", b"c", b"d", 5)
    assert from_json(KvmState, to_json(kvm)) == kvm
    rows = tuple[tuple[int, int], ...]
    assert from_json(rows, [[1, 2], [3, 4]]) == ((1, 2), (3, 4))
    with pytest.raises(StateError, match=r"\[1\]: expected 2 values"):
        from_json(rows, [[1, 2], [3]])
    with pytest.raises(StateError, match=r"\[0\]\[1\]: expected an integer"):
        from_json(rows, [[1, "2"]])


def _plan(**kw):
    return make_plan("/nonexistent/kernel", serial_backend="stdio", **kw)


def test_plan_differences_name_what_must_not_change() -> None:
    base = _plan(cpus=2, memory=256 << 20)
    blk = BlkPlan(id="disk0", mmio_base=0xD0000000, irq=5, file="/a", queue_size=128)
    net = NetPlan(id="net0", mmio_base=0xD0000200, irq=6, ifname="tap0", mac="52:54:00:00:00:01")
    a = dataclasses.replace(base, devices=(blk, net))
    # what clones change: name, MAC, tap, drive file, QMP
    b = dataclasses.replace(
        a,
        name="clone",
        qmp=("/tmp/q",),
        devices=(
            dataclasses.replace(blk, file="/b"),
            dataclasses.replace(net, ifname="tap9", mac="52:54:00:00:00:09"),
        ),
    )
    assert plan_differences(a.to_json(), b.to_json()) == []
    c = dataclasses.replace(
        _plan(cpus=4, memory=512 << 20),
        devices=(dataclasses.replace(blk, queue_size=256, readonly=True), net),
    )
    diffs = {d.field: str(d) for d in plan_differences(a.to_json(), c.to_json())}
    assert (
        diffs["MemoryPlan.size"] == "guest RAM size: the snapshot has 268435456, this VM 536870912"
    )
    assert diffs["TopologyPlan.cpus"].startswith("vCPU topology: the snapshot has cpus=2")
    assert "blk disk0: queue-size: the snapshot has 128, this VM 256" in diffs["BlkPlan.queue_size"]
    assert "BlkPlan.readonly" in diffs
    d = dataclasses.replace(a, devices=(net, blk))
    kinds = {x.field for x in plan_differences(a.to_json(), d.to_json())}
    assert kinds == {"NetPlan.kind", "BlkPlan.kind"}
    e = dataclasses.replace(a, devices=(blk,))
    [only] = plan_differences(a.to_json(), e.to_json())
    assert only.field == "Plan.devices" and "net net0" in str(only)
    f = dataclasses.replace(a, serial=None)
    assert [x.field for x in plan_differences(a.to_json(), f.to_json())] == ["Plan.serial"]


def test_refusals_are_stratovirts_limits() -> None:
    base = _plan()
    assert snapshot_refusals(base) == []
    balloon = BalloonPlan(id="b0", mmio_base=0xD0000000, irq=5)
    vhost = NetPlan(id="n0", mmio_base=0xD0000200, irq=6, ifname="t", vhost=True)
    slot = SlotPlan(id="s", mmio_base=0xD0000400, irq=7)
    shared = dataclasses.replace(base, memory=dataclasses.replace(base.memory, shared=True))
    hp = dataclasses.replace(
        base, memory=dataclasses.replace(base.memory, mem_path="/dev/hugepages")
    )
    got = snapshot_refusals(dataclasses.replace(base, devices=(balloon, vhost, slot)))
    assert [r.split(":")[0] for r in got] == [
        "balloon b0",
        "NIC n0 uses vhost-net, which StratoVirt does not snapshot",
    ]
    assert "shared" in snapshot_refusals(shared)[0]
    assert "/dev/hugepages" in snapshot_refusals(hp)[0]
    assert fmt.snapshot_folder("FILE:/x") == "/x"
    for bad in ("tcp:1.2.3.4:5", "file:", "/x", "unix:/x"):
        with pytest.raises(ValueError):
            fmt.snapshot_folder(bad)

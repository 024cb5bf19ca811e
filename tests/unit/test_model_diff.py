"""``launcher.model_diff.diff``: changed keys with old/new values and how each reaches a running VM."""

from __future__ import annotations

from dataclasses import replace

from launcher import keys as k
from launcher import model as m
from launcher.manifest import load_text
from launcher.model_diff import diff, needs_restart

BASE = """
name = "web"
qmp = "/run/web.qmp"
[memory]
size = "512M"
[boot]
kernel = "/boot/vmlinux"
cmdline = "console=ttyS0"
[drives.root]
file = "/img/root.img"
[nets.net0]
ifname = "tap0"
"""


def load(text: str = BASE) -> m.Manifest:
    man, issues = load_text(text, "toml", "/etc/vms/web.toml")
    assert man is not None, issues
    return man


def test_equal_manifests_have_no_changes() -> None:
    man = load()
    assert diff(man, load()) == []
    assert diff(man, replace(man, source="/elsewhere.toml", base_dir="/elsewhere")) == []
    assert not needs_restart([])


def test_a_drive_key_is_live_by_hot_replace() -> None:
    old = load()
    new = load(BASE.replace('file = "/img/root.img"', 'file = "/img/root.img"\niops = 500'))
    (change,) = diff(old, new)
    assert (change.path, change.old, change.new) == ("drives.root.iops", None, 500)
    assert change.live and change.apply is k.HOT_REPLACE_DISK
    assert change.apply.qmp == ("device_del", "blockdev-del", "blockdev-add", "device_add")
    assert not needs_restart([change])


def test_an_added_and_a_removed_drive_are_one_change_each() -> None:
    old = load()
    extra = BASE + '[drives.data]\nfile = "/img/data.img"\n'
    (added,) = diff(old, load(extra))
    assert added.path == "drives.data" and added.old is None and added.new.file == "/img/data.img"
    assert added.live
    (removed,) = diff(load(extra), old)
    assert removed.path == "drives.data" and removed.new is None and removed.live


def test_machine_level_keys_need_a_restart() -> None:
    old = load()
    new = load(BASE.replace('size = "512M"', 'size = "1G"').replace("ttyS0", "ttyS0 quiet"))
    changes = diff(old, new)
    assert [(c.path, c.old, c.new) for c in changes] == [
        ("memory.size", 512 << 20, 1 << 30),
        ("boot.cmdline", "console=ttyS0", "console=ttyS0 quiet"),
    ]
    assert all(c.apply is k.RESTART for c in changes) and needs_restart(changes)


def test_a_key_hot_replace_does_not_carry_needs_a_restart() -> None:
    old = load()
    new = load(BASE.replace('file = "/img/root.img"', 'file = "/img/root.img"\naio = "io_uring"'))
    (change,) = diff(old, new)
    assert change.path == "drives.root.aio" and not change.live


def test_nic_keys_and_their_limits() -> None:
    old = load()
    new = load(BASE.replace('ifname = "tap0"', 'ifname = "tap0"\nmac = "52:54:00:00:00:01"'))
    (change,) = diff(old, new)
    assert change.path == "nets.net0.mac" and change.apply is k.HOT_REPLACE_NIC
    vhost = load(BASE.replace('ifname = "tap0"', 'ifname = "tap0"\nvhost = true'))
    vhost_mac = load(
        BASE.replace('ifname = "tap0"', 'ifname = "tap0"\nvhost = true\nmac = "52:54:00:00:00:01"')
    )
    (change,) = diff(vhost, vhost_mac)
    assert not change.live  # the engine's netdev_add has no vhost


def test_no_hot_replace_slots_off_microvm() -> None:
    q35 = replace(load(), machine=m.Machine(m.MachineType.Q35))
    changed = replace(q35, drives=(replace(q35.drives[0], iops=9),))
    (change,) = diff(q35, changed)
    assert change.path == "drives.root.iops" and change.apply is k.RESTART


def test_sections_and_nested_keys() -> None:
    old = load()
    new = replace(old, vsock=m.Vsock(7), fast_unplug=True)
    changes = {c.path: c for c in diff(old, new)}
    assert set(changes) == {"global.pcie-root-port.fast-unplug", "vsock"}
    assert changes["vsock"].old is None and changes["vsock"].new.guest_cid == 7
    assert not changes["vsock"].live
    moved = replace(new, vsock=m.Vsock(8))
    (cid,) = diff(new, moved)
    assert (cid.path, cid.old, cid.new) == ("vsock.guest-cid", 7, 8)

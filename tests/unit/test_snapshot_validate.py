"""A restoring manifest's differences from its snapshot, reported at the keys that make them."""

from __future__ import annotations

from engine.snapshot.rules import plan_differences
from launcher.compile.engine_plan import compile_plan
from launcher.manifest import load_text
from launcher.validate.snapshot import difference_path, restore_issues

BASE = """\
name = "vm"
[cpu]
cpus = 2
[memory]
size = "256M"
[boot]
kernel = "/k"
[drives.d0]
file = "/tmp/x.img"
queue-size = 128
[nets.n0]
ifname = "tap0"
mac = "52:54:00:00:00:01"
[rngs.r0]
"""


def _both(changed: str):
    man, _ = load_text(BASE, "toml", "/tmp/a.toml")
    man2, issues = load_text(changed, "toml", "/tmp/b.toml")
    assert not [i for i in issues if i.is_error], issues
    plan, plan2 = compile_plan(man), compile_plan(man2)
    return man2, plan2, plan_differences(plan.to_json(), plan2.to_json())


def test_each_difference_points_at_its_key() -> None:
    text = (
        BASE.replace("queue-size = 128", "queue-size = 256\nreadonly = true")
        .replace('mac = "52:54:00:00:00:01"', 'mac = "52:54:00:00:00:01"\nqueue-size = 512')
        .replace('size = "256M"', 'size = "512M"')
    )
    man, plan, diffs = _both(text)
    where = {d.field: difference_path(d, man, plan) for d in diffs}
    assert where == {
        "MemoryPlan.size": ("memory", "size"),
        "BlkPlan.readonly": ("drives", "d0", "readonly"),
        "BlkPlan.queue_size": ("drives", "d0", "queue-size"),
        "NetPlan.queue_size": ("nets", "n0", "queue-size"),
    }


def test_what_clones_change_is_no_difference() -> None:
    text = (
        BASE.replace('name = "vm"', 'name = "clone"\nqmp = "/tmp/clone.qmp"')
        .replace("52:54:00:00:00:01", "52:54:00:00:00:02")
        .replace('ifname = "tap0"', 'ifname = "tap7"')
        .replace("/tmp/x.img", "/tmp/copy.img")
    )
    _, _, diffs = _both(text)
    assert diffs == []


def test_restore_issues_refuse_what_cannot_be_snapshotted() -> None:
    import dataclasses

    man, _ = load_text(BASE + "[balloon]\n[machine]\nmem-share = true\n", "toml", "/tmp/c.toml")
    assert restore_issues(man) == []  # no incoming: a balloon is fine
    got = restore_issues(dataclasses.replace(man, incoming="file:/tmp/snap"))
    assert {(i.code, i.path) for i in got} == {
        ("snapshot-unsupported", "balloon"),
        ("snapshot-unsupported", "machine.mem-share"),
    }
    assert all(i.hint and "drop incoming" in i.hint for i in got)

"""Rules across manifests, per host (``svlaunch validate DIR``, and every diff/apply), and the
host inventory: located errors, conflicts only between VMs that share a host."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.cli import main
from launcher.gitops.inventory import cross_check, facts, load_inventory, order
from launcher.manifest import load_text

VM = """name = "{name}"
{top}
[boot]
kernel = "/k"
initrd = "/i"
{extra}"""


def man(name: str, top: str = "", extra: str = ""):
    m, issues = load_text(VM.format(name=name, top=top, extra=extra), "toml", f"/v/{name}.toml")
    assert m is not None, issues
    return m


def codes(found: dict) -> list[tuple[str, str, str]]:
    return sorted((f, i.code, i.path) for f, issues in found.items() for i in issues)


def test_duplicates_only_between_vms_of_one_host() -> None:
    nic = '[nets.n0]\nifname = "tap7"\nmac = "52:54:00:00:00:07"\n'
    a = man("a", 'hosts = ["h1"]', nic)
    b = man("b", 'hosts = ["h2"]', nic)  # another host: no conflict
    c = man("c", "", nic)  # every host: conflicts with both
    found = cross_check([("a.toml", facts(a)), ("b.toml", facts(b)), ("c.toml", facts(c))])
    assert codes(found) == [  # once with a (on h1), once with b (on h2)
        ("c.toml", "cross-duplicate", "nets.n0.ifname"),
        ("c.toml", "cross-duplicate", "nets.n0.ifname"),
        ("c.toml", "cross-duplicate", "nets.n0.mac"),
        ("c.toml", "cross-duplicate", "nets.n0.mac"),
    ]
    messages = [i.message for i in found["c.toml"]]
    assert "tap tap7 is also used by VM 'a' (a.toml) on host 'h1'" in messages
    assert "tap tap7 is also used by VM 'b' (b.toml) on host 'h2'" in messages
    assert not cross_check([("a.toml", facts(a)), ("b.toml", facts(b))])


def test_every_shared_thing_is_found() -> None:
    shared = 'qmp = "/run/x.qmp"\npidfile = "/run/x.pid"\ndaemonize = true\n'
    extra = (
        '[vsock]\nguest-cid = 9\n[drives.d]\nfile = "/img/d.raw"\n'
        '[chardevs.c]\nbackend = "socket"\npath = "/run/x.sock"\nserver = true\nnowait = true\n'
        '[consoles.con]\nchardev = "c"\n'
    )
    a, b = man("a", shared, extra), man("b", shared, extra)
    found = cross_check([("a.toml", facts(a)), ("b.toml", facts(b))])
    assert codes(found) == [
        ("b.toml", "cross-duplicate", p)
        for p in sorted(["chardevs.c.path", "drives.d.file", "pidfile", "qmp", "vsock.guest-cid"])
    ]
    ro = man("r", "", '[drives.d]\nfile = "/img/d.raw"\nreadonly = true\n')
    assert not cross_check([("a.toml", facts(man("a", "", extra.split("[chardevs")[0]))),
                            ("r.toml", facts(ro))])  # fmt: skip


def test_names_and_default_macs() -> None:
    nic = '[nets.n0]\nifname = "tapx"\n'
    found = cross_check(
        [("a.toml", facts(man("web", "", nic))), ("b.toml", facts(man("web", "", '[nets.n0]\nifname = "tapy"\n')))]
    )  # fmt: skip
    assert ("b.toml", "vm-name-duplicate", "name") in codes(found)
    ok = cross_check([("a.toml", facts(man("a", 'hosts = ["h1"]'))),
                      ("b.toml", facts(man("a", 'hosts = ["h2"]')))])  # fmt: skip
    assert ok == {}  # the same name on two hosts: a VM that moves is two manifests


def test_depends_on_same_host_and_cycles() -> None:
    items = [
        ("a.toml", facts(man("a", 'hosts = ["h1"]\ndepends-on = ["b"]'))),
        ("b.toml", facts(man("b", 'hosts = ["h2"]'))),
    ]
    found = cross_check(items)
    assert codes(found) == [("a.toml", "cross-depends-on", "depends-on[0]")]
    cycle = cross_check(
        [
            ("x.toml", facts(man("x", 'depends-on = ["y"]'))),
            ("y.toml", facts(man("y", 'depends-on = ["z"]'))),
            ("z.toml", facts(man("z", 'depends-on = ["x"]'))),
        ]
    )
    (issue,) = [i for issues in cycle.values() for i in issues]
    assert "cycle: x -> y -> z -> x" in issue.message
    assert order({"web": ["db"], "db": [], "cache": ["db"], "lb": ["web", "cache"]}) == [
        "db", "cache", "web", "lb",
    ]  # fmt: skip


def test_inventory_overcommit_and_unknown_hosts(tmp_path: Path) -> None:
    inv = load_inventory('[hosts.h1]\ncpus = 2\nmemory = "1G"\n', "hosts.toml")
    assert inv.hosts == {"h1": (2, 1 << 30)}
    bad = load_inventory('[hosts.h1]\ncpus = "many"\n', "hosts.toml")
    assert [i.code for i in bad.issues] == ["inventory"] and bad.issues[0].mark.line == 1


def run(*argv: str, capsys) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_validate_dir_reports_located_conflicts_and_inventory(tmp_path: Path, capsys) -> None:
    d = tmp_path / "vms"
    (d / ".svlaunch").mkdir(parents=True)
    nic = '[nets.n0]\nifname = "tap1"\n'
    (d / "a.toml").write_text(VM.format(name="a", top='hosts = ["h1"]', extra=nic))
    (d / "b.toml").write_text(
        VM.format(name="b", top='hosts = ["h1", "h3"]\n[cpu]\ncpus = 4', extra=nic)
    )
    (d / ".svlaunch" / "hosts.toml").write_text("[hosts.h1]\ncpus = 2\n[hosts.h2]\ncpus = 8\n")
    rc, out, err = run("validate", str(d), capsys=capsys)
    assert rc == 1
    assert f"{d / 'b.toml'}:" in err and "error[cross-duplicate]" in err
    assert "tap tap1 is also used by VM 'a'" in err and "on host 'h1'" in err
    assert "warning[inventory]: host 'h3' is not in the inventory" in err
    assert "host 'h1' is over-committed: its 2 VMs ask for 5 vCPUs, it has 2 vCPUs" in err
    rc, out, _ = run("validate", "--format", "json", str(d), capsys=capsys)
    files = {f["file"]: f for f in json.loads(out)["files"]}
    assert {i["code"] for i in files[str(d / "b.toml")]["issues"]} >= {"cross-duplicate"}
    (d / "b.toml").write_text(VM.format(name="b", top='hosts = ["h2"]', extra=nic))
    rc, _, err = run("validate", str(d), capsys=capsys)
    assert rc == 0, err

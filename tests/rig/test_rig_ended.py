"""A real Linux panic ends the VM as ``guest-panic``; a clean poweroff as ``guest-shutdown``.

In one L1 run of the nested rig, two VMs boot the test guest (scripts/guest/init) with
``svlaunch up`` and a ``[pvpanic]`` section, each then asked for its ``status`` (the exit record
the runtime folder keeps, docs/lifecycle.md):

- ``svreport.panic``: after its report the init says whether Linux's pvpanic-mmio driver bound
  our DSDT's ``QEMU0001`` device and crashes the kernel (``sysrq c``); the panic notifier writes
  PVPANIC_PANICKED to the port, and the engine stops the VM: exit code 7, cause guest-panic;
- no knob: the init powers off through ACPI S5: exit code 0, cause guest-shutdown.

Without pvpanic the same panic would end as a reset (``panic=1``) or never (``panic=0``): the
device is what tells a supervisor that the guest crashed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from rigutil import GUEST, REPO, run_rig_boots

pytestmark = pytest.mark.rig

RIG_TIMEOUT = 600  # one L1 boot and two L2 boots; the machine may be shared
CMDLINE = "console=ttyS0 quiet reboot=k panic=1 pci=off"
STATUS = re.compile(r"RIGSTATUS (\{.*\})")


@pytest.fixture(scope="module")
def guest() -> Path:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST


def _manifest(tmp: Path, guest: Path, name: str, knobs: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nserial = "stdio"\n[machine]\ntype = "microvm"\n[cpu]\ncpus = 1\n'
        f'[memory]\nsize = "256M"\n[boot]\nkernel = "{guest / "vmlinuz"}"\n'
        f'initrd = "{guest / "initrd.img"}"\ncmdline = "{CMDLINE}{knobs}"\n[pvpanic]\n'
    )
    return path


def _boot_then_status(path: Path, name: str) -> str:
    """``svlaunch up`` in the foreground (its status is the boot's), then ``status --json``."""
    cli = "python3 -m launcher.cli"
    status = f"{cli} status {shlex.quote(name)} --json | tr -d '\\n'"
    return f'( {cli} up {shlex.quote(str(path))}; rc=$?; echo "RIGSTATUS $({status})"; exit $rc )'


def test_a_kernel_panic_is_guest_panic_and_a_poweroff_guest_shutdown(
    guest: Path, tmp_path: Path
) -> None:
    panics = _manifest(tmp_path, guest, "rig-panic", " svreport.panic")
    clean = _manifest(tmp_path, guest, "rig-clean", "")
    whole, boots = run_rig_boots(
        [
            ("panic", _boot_then_status(panics, "rig-panic")),
            ("clean", _boot_then_status(clean, "rig-clean")),
        ],
        files=[panics, clean, guest / "vmlinuz", guest / "initrd.img"],
        timeout=RIG_TIMEOUT,
    )
    explain = whole.explain()

    panic = boots["panic"]
    reports = {r.kind: r for r in panic.reports}
    assert "done" in reports and "panicking" in reports, explain
    # Linux bound pvpanic-mmio to our DSDT device and read back what the engine handles
    assert reports["panicking"].fields["pvpanic"] == "QEMU0001:00", explain
    assert reports["panicking"].fields["capability"] == "3", explain
    assert "sysrq triggered crash" in panic.stdout, explain
    assert panic.returncode == 7, explain
    assert "rig-panic: ended: guest-panic (7)" in whole.stderr, explain  # up's, on L1's console
    m = STATUS.search(panic.stdout)
    assert m, explain
    info = json.loads(m.group(1))
    assert info["state"] == "stopped", explain
    ended = info["ended"]
    assert (ended["cause"], ended["code"], ended["guest"]) == ("guest-panic", 7, True), explain
    assert ended["panicked"] is True and ended["reason"] == "the guest panicked", explain

    done = boots["clean"]
    assert done.returncode == 0, explain
    assert any(r.kind == "done" for r in done.reports), explain
    m = STATUS.search(done.stdout)
    assert m, explain
    ended = json.loads(m.group(1))["ended"]
    assert (ended["cause"], ended["code"], ended["panicked"]) == ("guest-shutdown", 0, False)

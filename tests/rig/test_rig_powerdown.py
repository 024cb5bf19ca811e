"""``svlaunch down`` powers a real Linux guest off through the ACPI power button (nested rig).

Inside L1 (raw mode of scripts/rig), tests/support/powerdown_driver.py does what a user does:
``svlaunch up -d --paused``, ``svlaunch console`` and ``svlaunch events --json`` attached, ``cont``,
then waits for the guest (scripts/guest/init with ``svreport.wait=powerbutton``) to print
``SVREPORT waiting powerbutton`` once its report is done, records ``ps``/``status``, and runs
``svlaunch down``. The chain under test: QMP ``system_powerdown`` → the engine's GED sets its
power-button bit and pulses GSI 23 → Linux's evged runs ``_EVT`` → ``Notify(PWRB, 0x80)`` →
the ``button`` driver reports KEY_POWER on /dev/input/eventN → the init prints
``SVREPORT powerbutton`` and powers off through ACPI S5 → the engine exits 0 and ``down`` says
"powered off" (not a quit, not a signal).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from powerdown_driver import check_clean_powerdown, parse
from rigutil import GUEST, REPO, parse_reports, run_rig_raw

pytestmark = pytest.mark.rig

NAME = "rig-powerdown"
DRIVER = REPO / "tests" / "support" / "powerdown_driver.py"
RIG_TIMEOUT = 600  # one L1 + L2 boot takes 30-60 s of rig time; the machine may be shared
CMDLINE = "console=ttyS0 quiet reboot=k panic=1 pci=off svreport.wait=powerbutton"


@pytest.fixture(scope="module")
def guest() -> Path:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST


def test_svlaunch_down_reaches_linux_through_the_power_button(guest: Path, tmp_path: Path) -> None:
    kernel, initrd = guest / "vmlinuz", guest / "initrd.img"
    manifest = tmp_path / "powerdown.toml"
    manifest.write_text(
        f'name = "{NAME}"\nserial = "stdio"\n[machine]\ntype = "microvm"\n[cpu]\ncpus = 1\n'
        f'[memory]\nsize = "256M"\n[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        f'cmdline = "{CMDLINE}"\n'
    )
    cmd = (
        f"python3 {DRIVER} --name {NAME} --manifest {manifest} --paused"
        " --wait-text 'SVREPORT waiting powerbutton' --timeout 420 --down-timeout 120"
    )
    res = run_rig_raw(cmd, files=[DRIVER, manifest, kernel, initrd], timeout=RIG_TIMEOUT)
    explain = res.explain()
    assert res.returncode == 0, explain
    steps, console = parse(res.stdout)
    check_clean_powerdown(steps, NAME, explain)

    reports = parse_reports(console)
    kinds = [r.kind for r in reports]
    assert "done" in kinds and "powerbutton" in kinds, explain
    waiting = next(r for r in reports if r.kind == "waiting")
    assert waiting.args == ("powerbutton",) and waiting.fields["dev"].startswith("event"), explain
    assert kinds.index("done") < kinds.index("waiting") < kinds.index("powerbutton"), explain
    pressed_at = console.index("SVREPORT powerbutton")
    assert "reboot: Power down" in console[pressed_at:], explain  # S5, not a reset
    assert "Kernel panic" not in console, explain

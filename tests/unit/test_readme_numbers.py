"""README.md's generated performance table is what bench/results/ says (scripts/readme-numbers)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "readme-numbers"


def test_readme_table_matches_the_committed_results() -> None:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_generated_row_links_its_results_file() -> None:
    mod = runpy.run_path(str(SCRIPT))
    rows = mod["table"]().splitlines()[2:]
    assert rows, "no generated rows: bench/results/ has no RESULT lines"
    for row in rows:
        link = row.rsplit("](", 1)[1].rstrip(" |)")
        assert (REPO / link).is_file(), row


def test_rig_net_lines_become_rows() -> None:
    mod = runpy.run_path(str(SCRIPT))
    line = "RESULT rig_net backend=tap measure=txN streams=4 builtin=120 qemu=200 ratio=0.60"
    path = REPO / "build" / "readme-numbers-test.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"noise\n{line}\n")
    try:
        (row,) = mod["rig_net"](mod["results"](path))
    finally:
        path.unlink()
    assert row == (
        "virtio-net Python tap path in the rig, TCP guest → host, 4 streams",
        "120 Mbit/s",
        "200 Mbit/s",
        "0.60×",
    )

"""README.md's generated performance table is what bench/results/ says (scripts/readme-numbers)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

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


#: RESULT lines as the benchmarks print them (smoke runs with the smallest arguments)
PRINTED = """\
RESULT cmdline_startup runs=2 cmdline_median_ms=108.75 cmdline_min_ms=99.98 python_median_ms=24.89 python_min_ms=22.82 own_ms=83.86
RESULT validate_many measure=many count=1000 runs=2 min_s=0.310 median_s=0.590
RESULT validate_many measure=python runs=2 min_ms=42.79 median_ms=42.82
RESULT validate_many measure=validate_one runs=2 min_ms=156.45 median_ms=808.34
RESULT engine_startup variant=exec n=2 first_min_ms=210.69 first_median_ms=350.21 exit_min_ms=275.16 exit_median_ms=403.40 cpu_min_ms=83.26 rss_max_mib=22 rc=0
RESULT engine_startup variant=seccomp n=2 first_min_ms=149.31 first_median_ms=176.78 exit_min_ms=212.13 exit_median_ms=219.57 cpu_min_ms=86.41 rss_max_mib=21 rc=0
RESULT engine_startup variant=qemu n=2 first_min_ms=47.03 first_median_ms=81.98 exit_min_ms=49.56 exit_median_ms=128.56 cpu_min_ms=23.59 rss_max_mib=36 rc=1
RESULT engine_startup variant=python n=2 exit_min_ms=75.38 exit_median_ms=79.93 cpu_min_ms=8.72 rss_max_mib=16 rc=0
RESULT pool_startup variant=pool n=2 first_min_ms=9.86 first_median_ms=10.62 reply_min_ms=1.30 reply_median_ms=4.37
RESULT pool_startup variant=exec n=2 first_min_ms=111.08 first_median_ms=146.28
RESULT pool_startup variant=qemu n=2 first_min_ms=63.71 first_median_ms=69.66
RESULT pool_memory variant=pool n=2 guest_mib=256 uss_median_mib=6.54 uss_max_mib=6.80 pss_median_mib=12.24 pss_max_mib=12.42 uss_vmm_median_mib=6.51 uss_vmm_max_mib=6.77 pss_vmm_median_mib=12.20 pss_vmm_max_mib=12.39
RESULT pool_memory variant=qemu n=2 guest_mib=256 uss_median_mib=12.74 uss_max_mib=12.78 pss_median_mib=21.67 pss_max_mib=21.71 uss_vmm_median_mib=12.74 uss_vmm_max_mib=12.78 pss_vmm_median_mib=21.67 pss_vmm_max_mib=21.71
RESULT pool_memory variant=pool-itself n=1 uss_mib=5.21 pss_mib=12.65
RESULT qmp_latency server=svlaunch command=query-status load=idle n=20 min_us=29.47 median_us=31.14 p99_us=66.85 max_us=66.85
RESULT qmp_latency server=qemu command=query-status load=idle n=20 min_us=105.25 median_us=110.34 p99_us=128.34 max_us=128.34
RESULT sandbox_startup mode=pivot runs=2 plain_median_ms=50.58 setup_median_ms=47.73 running_median_ms=107.19 added_median_ms=56.61 teardown_median_ms=82.10
RESULT rig_boot vmm=qemu-microvm kernel=vmlinux cpus=2 mem_mib=512 runs=1 min_s=9.40 median_s=9.40
RESULT rig_boot vmm=svlaunch-builtin kernel=vmlinux cpus=2 mem_mib=512 runs=1 min_s=9.10 median_s=9.10
RESULT gitops_diff vms=1000 runs=2 warm_min_s=0.81 warm_median_s=0.85 cold_median_s=2.10 validate_median_s=0.40
RESULT gitops_apply vms=50 parallel=4 apply_pool_off_s=10.00 apply_pool_on_s=5.00 up_loop_s=20.00 qemu_loop_s=2.50
RESULT gitops_agent_idle vms=5 interval_s=30 window_s=120 looks=4 cpu_pct=0.052 per_look_ms=15.00 rss_mib=40.00
RESULT snapshot_restore variant=pool-restore size_mib=2048 n=2 first_min_ms=5.10 first_median_ms=6.24 disk_mib=68
RESULT snapshot_restore variant=pool-boot size_mib=256 n=2 first_min_ms=5.00 first_median_ms=5.50
RESULT rig_snapshot vmm=svlaunch-pool n=2 restore_min_ms=38.00 restore_median_ms=40.00
RESULT rig_snapshot vmm=qemu n=2 restore_min_ms=880.00 restore_median_ms=900.00
RESULT rig_console mode=verbose vmm=qemu-microvm bytes=102418 runs=3 min_s=22.14 median_s=23.14 cpu_median_s=20.49
RESULT rig_console mode=verbose vmm=svlaunch-builtin bytes=102204 runs=3 min_s=22.00 median_s=23.00 cpu_median_s=20.10
RESULT rig_console mode=quiet vmm=qemu-microvm bytes=425 runs=3 min_s=7.49 median_s=8.24 cpu_median_s=6.03
RESULT rig_console mode=quiet vmm=svlaunch-builtin bytes=425 runs=3 min_s=7.59 median_s=7.67 cpu_median_s=6.30
"""


def rows_of(bench: str, tmp_path: Path) -> list[tuple[str, str, str, str]]:
    mod = runpy.run_path(str(SCRIPT))
    path = tmp_path / f"{bench}.txt"
    path.write_text(f"header\n{PRINTED}")
    return mod["ROWS"][bench]([r for r in mod["results"](path) if r["bench"] == bench])


def test_every_benchmark_that_prints_results_has_rows(tmp_path: Path) -> None:
    for bench in dict.fromkeys(line.split()[1] for line in PRINTED.splitlines()):
        assert rows_of(bench, tmp_path), bench


def test_start_up_rows_put_svlaunch_next_to_qemu(tmp_path: Path) -> None:
    first, seccomp, exited, rss = rows_of("engine_startup", tmp_path)
    assert first[0].startswith("engine exec → first guest instruction, `python -I -S` (")
    assert first[1:] == ("350.2 ms (min 210.7)", "82.0 ms (min 47.0)", "0.23×")
    assert seccomp[1] == "176.8 ms (min 149.3)" and exited[1] == "403.4 ms (min 275.2)"
    assert rss[1:] == ("22 MiB", "36 MiB", "1.64×")
    (pool,) = rows_of("pool_startup", tmp_path)
    assert pool[1:] == ("10.6 ms (min 9.9)", "69.7 ms (min 63.7)", "6.56×")


def test_memory_rows_and_a_row_without_qemu(tmp_path: Path) -> None:
    uss, pss, itself = rows_of("pool_memory", tmp_path)
    assert "USS per paused 256 MiB VM beyond guest RAM, through the engine pool" in uss[0]
    assert uss[1:] == ("6.51 MiB", "12.74 MiB", "1.96×")
    assert pss[1:] == ("12.20 MiB", "21.67 MiB", "1.78×")
    assert itself[1:] == ("5.21 MiB", "-", "-")


def test_cli_qmp_sandbox_and_rig_boot_rows(tmp_path: Path) -> None:
    (cmdline,) = rows_of("cmdline_startup", tmp_path)
    assert cmdline[1:] == ("108.8 ms (min 100.0)", "-", "-") and "24.9 ms" in cmdline[0]
    many, one = rows_of("validate_many", tmp_path)
    assert many[0].startswith("1,000 manifests") and many[1] == "0.59 s (min 0.31)"
    assert one[1] == "808.3 ms (min 156.4)"
    median, p99 = rows_of("qmp_latency", tmp_path)
    assert median[1:] == ("31 µs", "110 µs", "3.54×") and p99[1:] == ("67 µs", "128 µs", "1.92×")
    (sandbox,) = rows_of("sandbox_startup", tmp_path)
    assert sandbox[1:] == ("56.6 ms", "-", "-") and "pivot_root" in sandbox[0]
    (boot,) = rows_of("rig_boot", tmp_path)
    assert boot[1:] == ("9.10 s (min 9.10)", "9.40 s (min 9.40)", "1.03×")


def test_a_stale_readme_is_rewritten_to_what_the_results_say() -> None:
    mod = runpy.run_path(str(SCRIPT))
    text = (REPO / "README.md").read_text()
    row = mod["table"]().splitlines()[2]
    stale = text.replace(row, row.replace("|", "| 1 ", 2))
    assert stale != text and mod["render"](stale) == text


def test_result_lines_are_one_word_per_value(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(REPO))
    from bench._result import result

    result("demo", a=1, b=2.345, c="x")
    assert capsys.readouterr().out == "RESULT demo a=1 b=2.35 c=x\n"
    for bad in ("two words", "", "k=v"):
        with pytest.raises(ValueError, match="must be one word"):
            result("demo", a=bad)


def test_gitops_rows(tmp_path: Path) -> None:
    (diff,) = rows_of("gitops_diff", tmp_path)
    assert diff[1:] == ("0.81 s", "-", "-") and "1,000 running VMs, no change" in diff[0]
    off, on = rows_of("gitops_apply", tmp_path)
    assert off[1:] == ("10.00 s", "2.50 s", "0.25×") and "engine pool off" in off[0]
    assert on[1:] == ("5.00 s", "2.50 s", "0.50×") and "engine pool on" in on[0]
    (idle,) = rows_of("gitops_agent_idle", tmp_path)
    assert idle[1:] == ("0.052 % of one CPU", "-", "-") and "a look every 30 s" in idle[0]


def test_snapshot_rows(tmp_path: Path) -> None:
    restore, boot = rows_of("snapshot_restore", tmp_path)
    assert restore[0].startswith("snapshot restore through the engine pool: request → guest runs")
    assert "2048 MiB guest" in restore[0] and "goal ≤ 10 ms" in restore[0]
    assert restore[1:] == ("6.2 ms (min 5.1)", "-", "-")
    assert boot[0].startswith("fresh boot through the engine pool") and "goal" not in boot[0]
    (rig,) = rows_of("rig_snapshot", tmp_path)
    assert rig[1:] == ("40.0 ms (min 38.0)", "900.0 ms (min 880.0)", "22.50×")


def test_rig_console_rows(tmp_path: Path) -> None:
    verbose, quiet = rows_of("rig_console", tmp_path)
    assert "the whole kernel log (102 KB) on ttyS0" in verbose[0]
    assert verbose[1:] == ("23.00 s (min 22.00)", "23.14 s (min 22.14)", "1.01×")
    assert "`quiet` on ttyS0" in quiet[0] and quiet[3] == "1.07×"

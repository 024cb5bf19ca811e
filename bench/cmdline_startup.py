"""Cold start of ``svlaunch cmdline examples/quickstart.toml`` next to a bare ``python -c pass``.

Each run is a fresh subprocess (the way CI loops call it); the median of N runs is printed for
both, with the difference (svlaunch's own cost). Target: ≤ 60 ms in total. Then one run under
``python -X importtime`` lists the heaviest imports and checks that nothing cmdline does not need
(the engine beyond its contract, cffi, rich, pyroute2, jsonschema) is imported.

    python bench/cmdline_startup.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._result import result  # noqa: E402

MANIFEST = ROOT / "examples" / "quickstart.toml"
TARGET_MS = 60.0
FORBIDDEN = ("engine", "cffi", "rich", "pyroute2", "jsonschema")
# Measure what users get: bytecode caches written (a PYTHONDONTWRITEBYTECODE=1 shell would
# otherwise recompile every module on every run and measure the compiler instead).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def times_ms(cmd: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def import_profile() -> list[tuple[int, str]]:
    """(cumulative µs, module) for every import of one cmdline run."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "launcher.cli", "cmdline", str(MANIFEST)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        rows.append((int(cumulative), name))
    return rows


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    svlaunch = [sys.executable, "-m", "launcher.cli", "cmdline", str(MANIFEST)]
    times_ms(svlaunch, 1)  # warm-up: writes the bytecode caches
    bare_runs = times_ms([sys.executable, "-c", "pass"], runs)
    cold_runs = times_ms(svlaunch, runs)
    bare, cold = statistics.median(bare_runs), statistics.median(cold_runs)
    print(f"python -c pass                         median {bare:6.1f} ms  ({runs} runs)")
    print(f"svlaunch cmdline examples/quickstart   median {cold:6.1f} ms  ({runs} runs)")
    print(f"svlaunch's own cost                           {cold - bare:6.1f} ms")
    print(
        f"target                                 <= {TARGET_MS:.0f} ms: {'ok' if cold <= TARGET_MS else 'MISSED'}"
    )
    rows = import_profile()
    top = sorted((r for r in rows if r[1].startswith("launcher") or "." not in r[1]), reverse=True)[
        :12
    ]
    print("\nheaviest imports (cumulative):")
    for us, name in top:
        print(f"  {us / 1000:7.2f} ms  {name}")
    from engine import CONTRACT_MODULES  # what the launcher may load of the engine

    bad = sorted({n for _, n in rows if n.split(".")[0] in FORBIDDEN and n not in CONTRACT_MODULES})
    print(f"\nforbidden imports: {', '.join(bad) if bad else 'none'}")
    result("cmdline_startup", runs=runs, cmdline_median_ms=cold, cmdline_min_ms=min(cold_runs),
           python_median_ms=bare, python_min_ms=min(bare_runs), own_ms=cold - bare)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark in bench/ (or those named on the command line) and print their numbers.

python -m bench                    # all of them
python -m bench cmdline_startup    # one
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))
    failed = 0
    for name in names:
        script = HERE / f"{name}.py"
        print(f"== {name} ==", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"-- {name}: exit {rc} in {time.monotonic() - start:.1f} s\n", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

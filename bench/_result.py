"""The ``RESULT`` lines a benchmark prints at the end of its report (scripts/readme-numbers reads them).

One line per measured thing: ``RESULT <bench> key=value ...``; values carry no spaces. The
README's table is generated from the lines in the committed run outputs (bench/results/), so a
number there can be traced to the run that printed it.
"""

from __future__ import annotations


def result(bench: str, **values: str | int | float) -> None:
    """Print one RESULT line; floats get two decimals (the README rounds further)."""
    words = []
    for key, value in values.items():
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        if not text or any(c.isspace() or c == "=" for c in text):
            raise ValueError(f"RESULT {bench}: {key}={text!r} must be one word")
        words.append(f"{key}={text}")
    print(f"RESULT {bench} {' '.join(words)}", flush=True)

"""svlaunch's error vocabulary: a leaf module every other module may import.

It lives in the engine because the engine is the lowest layer: the launcher re-exports it
(``launcher.errors``) and adds its own usage error. Errors carry structured facts (where, what,
how to fix) and render themselves; nothing here imports the rest of the project or any
third-party package, so raising an error is always cheap.

Exit codes, the same for ``svlaunch`` and the engine process: 0 ok, 1 a ``SvlaunchError`` (input
or host state the user must fix), 2 a usage error (bad flags), 3 an internal error (a bug: the
traceback is printed), 130 interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INVALID = 1  # invalid input: manifest, argv, host state the user must fix
EXIT_USAGE = 2  # usage error (bad command-line flags)
EXIT_INTERNAL = 3  # an internal error: a bug, reported with its traceback
EXIT_INTERRUPTED = 130  # SIGINT (128 + 2)


@dataclass(frozen=True, slots=True, order=True)
class Mark:
    """A place in a source file. ``line`` and ``col`` are 1-based; 0 means unknown."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        if self.col <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in user input. ``path`` is the key path (``drives.root.file``)."""

    message: str
    path: str = ""
    hint: str = ""
    mark: Mark | None = None
    severity: str = "error"  # "error" | "warning"
    code: str = ""  # kebab-case rule name, stable for tooling (e.g. "smp-topology-product")

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def located(self, mark: Mark | None) -> Issue:
        """The same issue placed at ``mark`` (issues are immutable)."""
        return Issue(self.message, self.path, self.hint, mark, self.severity, self.code)

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        at = f" (at {self.path})" if self.path else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        return f"{where}{self.severity}: {self.message}{at}{hint}"


class SvlaunchError(Exception):
    """A user-facing failure: one clear message, optional hint, exit code 1."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, hint: str = "", mark: Mark | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.mark = mark

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        return f"{where}{self.message}{hint}"


class InvalidInput(SvlaunchError):
    """Input that failed validation; carries every issue found, not just the first."""

    def __init__(self, issues: list[Issue], message: str = "") -> None:
        errors = [i for i in issues if i.is_error]
        super().__init__(message or f"{len(errors)} error(s) found")
        self.issues = list(issues)

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


class HostError(SvlaunchError):
    """The host cannot do what the manifest asks (missing file, no /dev/kvm, no NUMA node...)."""


class EngineError(SvlaunchError):
    """A failure while building or running a VM. Subclasses carry the facts they name."""


class GuestMemoryError(EngineError):
    """An access outside guest RAM (or spanning a hole). Guest-triggerable: never fatal to the engine."""

    def __init__(self, addr: int, length: int, reason: str = "outside guest memory") -> None:
        super().__init__(f"guest memory access [{addr:#x}, +{length:#x}) {reason}")
        self.addr = addr
        self.length = length


#: where svlaunch and its engine processes also keep a crash's traceback (tests/conftest.py)
CRASH_DIR = "SVLAUNCH_CRASH_DIR"


def record_crash(who: str, argv: list[str], text: str) -> None:
    """With ``$SVLAUNCH_CRASH_DIR`` set (test suites, CI), also keep a traceback in a file there:
    a crash is noticed even when the process's stderr went to a log or terminal nobody reads
    (the suite fails any test that leaves one). A folder it cannot write (a jail) is skipped."""
    import os

    folder = os.environ.get(CRASH_DIR)
    if not folder:
        return
    import tempfile

    try:
        fd, _ = tempfile.mkstemp(prefix=f"{who}-crash-{os.getpid()}-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{who} {argv!r}\n{text}")
    except OSError:
        pass

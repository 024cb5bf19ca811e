"""Sandbox errors: each names the step that failed, the path or value, and what to change."""

from __future__ import annotations

from engine.errors import HostError


class SandboxError(HostError):
    """A sandbox step failed. ``step`` is one of the realize/teardown step names (or "plan")."""

    def __init__(self, step: str, message: str, *, path: str = "", hint: str = "") -> None:
        where = f" ({path})" if path else ""
        super().__init__(f"sandbox {step}: {message}{where}", hint=hint)
        self.step = step
        self.path = path
        self.detail = message

    def to_json(self) -> dict[str, str]:
        return {"step": self.step, "message": self.detail, "path": self.path, "hint": self.hint}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> SandboxError:
        return cls(
            data["step"], data["message"], path=data.get("path", ""), hint=data.get("hint", "")
        )


def from_oserror(step: str, err: OSError, path: str = "", hint: str = "") -> SandboxError:
    """Wrap an ``OSError`` from ``sys.py``, keeping its text (it carries the call and errno)."""
    text = err.strerror or str(err)
    if err.filename and not path:
        path = str(err.filename)
    if not hint and err.errno == 1:  # EPERM
        hint = "run as root (the sandbox needs CAP_SYS_ADMIN, CAP_SETUID, CAP_MKNOD...)"
    return SandboxError(step, text, path=path, hint=hint)

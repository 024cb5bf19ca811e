"""Real git repositories for the GitOps tests: a bare repository (the "remote") and a working
clone that commits and pushes to it, with git's own commands (no library, no mock)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV = {
    "GIT_AUTHOR_NAME": "svtest",
    "GIT_AUTHOR_EMAIL": "svtest@example.invalid",
    "GIT_COMMITTER_NAME": "svtest",
    "GIT_COMMITTER_EMAIL": "svtest@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **ENV, "GIT_CONFIG_GLOBAL": os.devnull},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, f"git {' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


class Repo:
    """``bare`` is what svlaunch fetches (``source``); ``work`` is where the test edits."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "repo.git"
        self.work = root / "work"
        self.branch = branch
        root.mkdir(parents=True, exist_ok=True)
        git(root, "init", "--quiet", "--bare", "-b", branch, str(self.bare))
        git(root, "init", "--quiet", "-b", branch, str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def source(self) -> str:
        return f"{self.bare}#{self.branch}"

    def write(self, path: str, text: str) -> Path:
        p = self.work / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def remove(self, path: str) -> None:
        git(self.work, "rm", "--quiet", path)

    def commit(self, message: str = "change") -> str:
        """Commit everything in the work tree and push it; the new commit id."""
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "--force", "origin", f"HEAD:{self.branch}")
        return git(self.work, "rev-parse", "HEAD")

    def force_back(self, commit: str) -> str:
        """Rewrite the branch to ``commit`` (a force-push that drops later commits)."""
        git(self.work, "reset", "--quiet", "--hard", commit)
        git(self.work, "push", "--quiet", "--force", "origin", f"HEAD:{self.branch}")
        return commit

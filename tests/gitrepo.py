"""A small helper for tests that build git repositories with the git CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=_ENV, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def write(self, relative: str, text: str) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def read(self, relative: str) -> str:
        return (self.path / relative).read_text()

    def edit(self, relative: str, old: str, new: str) -> None:
        text = self.read(relative)
        assert old in text, f"{old!r} not in {relative}"
        self.write(relative, text.replace(old, new, 1))

    def commit(self, message: str) -> str:
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")

    def branch(self, name: str, *, start: str = "main") -> None:
        self.git("checkout", "--quiet", "-B", name, start)

"""Reaching a repository: remote ones are kept as bare mirrors; ``git`` runs for what libgit2 does not do.

Used by :class:`~controller.backends.git.Repository` (clone and fetch of a
mirror). A git failure is a :class:`GitError` that says what was tried.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["GitError", "clone_mirror", "is_remote", "mirror_path", "run_git"]

_SCP_LIKE = re.compile(r"^[\w.+-]+@[\w.-]+:")
_GIT_TIMEOUT_SECONDS = 600.0


class GitError(Exception):
    """A repository, ref, commit or path that cannot be read."""


def is_remote(location: str) -> bool:
    """True for a URL to mirror (``https://``, ``ssh://``, ``file://``, ``git@host:``), not a local path."""
    return "://" in location or bool(_SCP_LIKE.match(location))


def mirror_path(mirror_root: Path, url: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rstrip("/").rsplit("/", 1)[-1]).strip("-.") or "repo"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return mirror_root / f"{slug.removesuffix('.git')}-{digest}.git"


def clone_mirror(url: str, mirror: Path) -> None:
    mirror.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clone-", dir=mirror.parent))
    try:
        run_git(["clone", "--mirror", "--quiet", "--", url, str(staging / "repo.git")], what=f"mirror {url}")
        if mirror.exists():  # an incomplete earlier attempt: replace it
            shutil.rmtree(mirror)
        (staging / "repo.git").rename(mirror)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_git(args: list[str], *, what: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            check=True,
            capture_output=True,
            timeout=_GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"{what}: timed out after {_GIT_TIMEOUT_SECONDS:.0f}s") from exc
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise GitError(f"{what}: {message or f'git exited with {exc.returncode}'}") from exc

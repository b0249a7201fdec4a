"""``flywheel init``: scaffold a new GitOps repository from the template shipped in this package.

The template holds one example model (an iris classifier trained on data that
ships with scikit-learn), a policy with an approval rule for production, and a
staging and a production environment on the embedded home. With
``home="cluster"`` (``flywheel init DIR --home cluster``) the environments are
the cluster home's instead (``cluster/environments/``: pipelines on Argo
Workflows, images in a registry, artifacts on a PersistentVolumeClaim), with
placeholders for the cluster's addresses to replace. ``examples`` adds more
example models from ``examples/`` beside it (``flywheel init --example
breast-cancer``; ``flywheel demo`` adds them all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Literal

# Files whose name in the template differs from the name they get: a file
# called .gitignore would be dropped by packaging tools.
_RENAMES = {"gitignore": ".gitignore"}

Home = Literal["embedded", "cluster"]
HOMES: tuple[Home, ...] = ("embedded", "cluster")
# More example models than the template's iris, each a directory of examples/ that becomes specs/<name>/
EXAMPLES: tuple[str, ...] = ("breast-cancer",)


class ScaffoldError(Exception):
    """The target cannot be scaffolded (exists and is not empty, git failed, ...)."""


def _copy(node: Traversable, dest: Path) -> list[Path]:
    written: list[Path] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        target = dest / _RENAMES.get(child.name, child.name)
        if child.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            written.extend(_copy(child, target))
        else:
            target.write_bytes(child.read_bytes())
            written.append(target)
    return written


def scaffold(
    directory: Path,
    *,
    git: bool = True,
    branch: str = "main",
    home: Home = "embedded",
    examples: Sequence[str] = (),
) -> list[Path]:
    """Write the template into ``directory`` and, with ``git``, make it a repository with one commit.

    ``home`` picks the environments: the embedded home's (the template's own)
    or the cluster home's, which take their place; each of ``examples`` (see
    :data:`EXAMPLES`) adds that example model. Refuses a directory that
    exists and is not empty. Returns the files written.
    """
    if home not in HOMES:
        raise ScaffoldError(f"home {home!r} is not one of {', '.join(HOMES)}")
    unknown = [name for name in examples if name not in EXAMPLES]
    if unknown:
        raise ScaffoldError(f"no example model {unknown[0]!r} (examples: {', '.join(EXAMPLES)})")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory}: exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    package = resources.files("controller.scaffold")
    written = _copy(package.joinpath("template"), directory)
    if home == "cluster":
        replaced = _copy(package.joinpath("cluster"), directory)
        written = sorted(set(written) | set(replaced))
    for name in dict.fromkeys(examples):
        (directory / "specs" / name).mkdir(parents=True)
        written += _copy(package.joinpath("examples").joinpath(name), directory / "specs" / name)
    if git:
        _git_init(directory, branch)
    return written


def _git_init(directory: Path, branch: str) -> None:
    if shutil.which("git") is None:
        raise ScaffoldError("git is not installed; install it or pass --no-git")
    env = {
        "GIT_AUTHOR_NAME": "flywheel",
        "GIT_AUTHOR_EMAIL": "flywheel@localhost",
        **os.environ,
    }
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    for args in (
        ["init", "--quiet", f"--initial-branch={branch}"],
        ["add", "--all"],
        ["commit", "--quiet", "--no-verify", "-m", "Start a Flywheel repository"],
    ):
        done = subprocess.run(["git", *args], cwd=directory, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ScaffoldError(f"git {args[0]} failed: {done.stderr.strip()}")

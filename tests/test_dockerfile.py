"""Flywheel's own Dockerfile (read with dockerfile-parse): the base, git, what it copies and installs,
the user it runs as, and its entrypoint, the console script ``pip install .`` puts on the PATH.

No image is built here (no base image can be pulled, and ``pip install .`` needs the package index);
what can be checked without building is checked against the repository itself.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    found: list[dict[str, Any]] = parser.structure
    return found


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def of(instructions: list[dict[str, Any]], kind: str) -> list[str]:
    return [i["value"] for i in instructions if i["instruction"] == kind]


def ignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_base_is_python_3_11_slim_with_git(instructions: list[dict[str, Any]]) -> None:
    assert of(instructions, "FROM") == ["python:3.11-slim"]
    installs = [shlex.split(run) for run in of(instructions, "RUN") if "apt-get install" in run]
    assert installs and any("git" in words for words in installs)


def test_every_copy_source_exists_is_not_ignored_and_the_package_builds_from_them(
    instructions: list[dict[str, Any]], pyproject: dict[str, Any]
) -> None:
    sources: list[str] = []
    for copy in of(instructions, "COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--")]
        sources.extend(words[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        matched = [p for p in ignored() if fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source, p + "/*")]
        assert matched == [], f"COPY {source}: excluded by .dockerignore {matched}"
    copied = {Path(s).parts[0] for s in sources}
    assert "pyproject.toml" in copied and pyproject["project"]["readme"] in copied
    for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"{package}: pip install . needs it copied"


def test_pip_installs_the_project_without_test_extras(instructions: list[dict[str, Any]]) -> None:
    installs = [shlex.split(run) for run in of(instructions, "RUN") if "pip install" in run]
    assert len(installs) == 1
    words = installs[0]
    target = words[words.index("install") + 1 :]
    copied_to = next(shlex.split(c)[-1] for c in of(instructions, "COPY") if "pyproject.toml" in c)
    assert copied_to.rstrip("/") in target, words  # the directory pyproject.toml was copied to
    assert not any("[" in w for w in target), words


def test_it_runs_as_a_numbered_user_that_is_not_root(instructions: list[dict[str, Any]]) -> None:
    users = of(instructions, "USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)


def test_the_entrypoint_is_the_installed_console_script(
    instructions: list[dict[str, Any]], pyproject: dict[str, Any]
) -> None:
    entrypoint = json.loads(of(instructions, "ENTRYPOINT")[-1])  # the exec form: signals reach flywheel
    assert entrypoint == ["flywheel"]
    assert pyproject["project"]["scripts"]["flywheel"] == "controller.cli:main"

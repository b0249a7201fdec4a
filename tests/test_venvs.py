"""Isolated virtualenvs are named by a stable hash of their inputs and built exactly once.

Pinned down here: the environment hash ignores comments, order and spacing in
the requirements but not the Python version or the platform; ``VenvCache``
builds an environment once and hands back the same path instantly afterwards,
also when two builders race; a bad requirement or an unavailable Python gives a
clear error and leaves no half-built directory behind. Builds use empty or
tiny requirements so no test downloads much.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.backends.local.venvs import MARKER, VenvBuildError, VenvCache, find_uv, model_environment
from controller.backends.python_env import PythonEnvironment, environment_hash
from controller.specs.types import Model, Source
from tests.fixtures.required import missing

pytestmark = pytest.mark.integration
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_hash_ignores_comments_order_and_spacing() -> None:
    a = PythonEnvironment(requirements="scikit-learn>=1.4,<2\njoblib>=1.3\n", python="3.11")
    b = PythonEnvironment(
        requirements="# deps\n\njoblib>=1.3   # for dumps\n  scikit-learn>=1.4,<2\n", python="3.11"
    )
    assert environment_hash(a) == environment_hash(b) == a.hash
    assert len(a.hash) == 64 and int(a.hash, 16) >= 0


def test_hash_changes_with_python_platform_and_requirements() -> None:
    base = PythonEnvironment(requirements="joblib>=1.3", python="3.11", platform="linux-x86_64")
    others = [
        PythonEnvironment(requirements="joblib>=1.3", python="3.12", platform="linux-x86_64"),
        PythonEnvironment(requirements="joblib>=1.3", python="3.11", platform="macosx-14-arm64"),
        PythonEnvironment(requirements="joblib>=1.4", python="3.11", platform="linux-x86_64"),
    ]
    assert len({base.hash, *(o.hash for o in others)}) == 4


def test_spec_for_a_model_reads_its_requirements_from_the_exported_source(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("joblib>=1.3\n")
    model = Model(
        name="m",
        spec_path="specs/m/model.yaml",
        source=Source(path="specs/m", requirements="specs/m/requirements.txt", python="3.11"),
    )
    spec = model_environment(model, tmp_path)
    assert spec.canonical_requirements() == ("joblib>=1.3",) and spec.python == "3.11"
    outside = Model(
        name="m",
        spec_path="specs/m/model.yaml",
        source=Source(path="specs/m", requirements="requirements.txt", python="3.11"),
    )
    with pytest.raises(VenvBuildError, match="outside the model's source directory"):
        model_environment(outside, tmp_path)


def test_builds_once_and_reuses(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs")
    spec = PythonEnvironment(requirements="# nothing needed\n", python=PY)
    assert not cache.is_built(spec)
    first = cache.ensure(spec)
    assert (first / MARKER).is_file() and cache.is_built(spec)
    out = subprocess.run(
        [str(first / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()) == first
    marker_time = (first / MARKER).stat().st_mtime_ns
    began = time.perf_counter()
    second = cache.ensure(spec)
    assert time.perf_counter() - began < 0.05
    assert second == first and (first / MARKER).stat().st_mtime_ns == marker_time
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == [".locks", first.name]


def test_racing_builders_build_once(tmp_path: Path) -> None:
    spec = PythonEnvironment(requirements="", python=PY)
    builds: list[Path] = []
    paths: list[Path] = []

    class Counting(VenvCache):
        def _build(self, spec: PythonEnvironment, tmp: Path, final: Path) -> None:
            builds.append(tmp)
            super()._build(spec, tmp, final)

    def ensure() -> None:
        paths.append(Counting(tmp_path / "venvs").ensure(spec))

    threads = [threading.Thread(target=ensure) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(builds) == 1 and len(paths) == 2 and paths[0] == paths[1]


def test_bad_requirement_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs")
    spec = PythonEnvironment(requirements="this is ??? not a requirement\n", python=PY)
    with pytest.raises(VenvBuildError, match="installing the requirements failed") as caught:
        cache.ensure(spec)
    assert "not a requirement" in str(caught.value)  # the installer's own words are in the message
    assert not cache.is_built(spec)
    assert [p.name for p in (tmp_path / "venvs").iterdir()] == [".locks"]


def test_unavailable_python_is_a_clear_error(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs")
    with pytest.raises(VenvBuildError, match=r"Python 2\.5 is not available on this machine"):
        cache.ensure(PythonEnvironment(requirements="", python="2.5"))
    assert [p.name for p in (tmp_path / "venvs").iterdir()] == [".locks"]


def test_stale_half_built_directories_are_cleaned_up(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs")
    spec = PythonEnvironment(requirements="", python=PY)
    final = cache.path_for(spec)
    final.parent.mkdir(parents=True)
    (final.parent / f".tmp-{final.name}-crashed").mkdir()
    (final / "bin").mkdir(parents=True)  # a directory without the marker is not trusted
    assert cache.ensure(spec) == final and (final / MARKER).is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == [".locks", final.name]


def test_installs_a_small_pure_python_package(tmp_path: Path) -> None:
    if find_uv() is None:
        missing("the program uv (pip install uv)")
    cache = VenvCache(tmp_path / "venvs")
    venv = cache.ensure(PythonEnvironment(requirements="six\n", python=PY))
    subprocess.run([str(venv / "bin" / "python"), "-c", "import six"], check=True)


def test_pip_fallback_builds_a_relocated_venv(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs", use_uv=False)
    venv = cache.ensure(PythonEnvironment(requirements="", python=PY))
    pip = (venv / "bin" / "pip").read_text()  # a shebang, or a /bin/sh exec line for long paths
    assert f"{venv}/bin/python" in pip and ".tmp-" not in pip
    assert ".tmp-" not in (venv / "bin" / "activate").read_text()
    subprocess.run([str(venv / "bin" / "pip"), "--version"], check=True, capture_output=True)

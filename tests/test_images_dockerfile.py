"""Dockerfile and build context of a model's image: generated or the spec's own, same inputs same bytes."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from controller.backends.images import ImageError, ImageRequest
from controller.backends.images.dockerfile import (
    DOCKERFILE,
    REQUIREMENTS,
    archive,
    context_files,
    render,
    unpack,
)
from controller.backends.pipelines import environment_hash
from controller.backends.python_env import PythonEnvironment
from controller.specs.types import ImagesSpec

pytestmark = pytest.mark.unit

IMAGES = ImagesSpec(
    registry="r.example:5000",
    repository="ml",
    base_image="python:3.11-slim",
    push_secret=None,
    insecure=False,
)


def make_request(
    source: Path,
    requirements: str = "numpy==2.0\nscikit-learn\n",
    *,
    python: str = "3.11",
    dockerfile: str | None = None,
) -> ImageRequest:
    return ImageRequest(
        model="iris",
        environment_hash=environment_hash(requirements=requirements, python=python),
        source_dir=source,
        python=PythonEnvironment(requirements=requirements, python=python),
        dockerfile=dockerfile,
        images=IMAGES,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    code = tmp_path / "iris"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text("print('train')\n")
    (code / "pkg" / "util.py").write_text("X = 1\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    return code


def test_the_generated_dockerfile_installs_the_requirements_with_the_models_python(source: Path) -> None:
    text = render(make_request(source, python="3.12.1"))
    lines = text.splitlines()
    assert lines[1] == "FROM python:3.11-slim"
    assert f"RUN python3.12 -m pip install --no-cache-dir -r /flywheel/{REQUIREMENTS}" in lines
    # the environment only: the code reaches the pods from git at the run's commit (it once was copied
    # here, and a code change with the same requirements then ran the image's old code)
    assert not any(line.startswith("COPY src") for line in lines) and lines[-1] == "WORKDIR /flywheel"


def test_same_inputs_give_the_same_dockerfile_and_archive_bytes(source: Path) -> None:
    first = make_request(source, "scikit-learn\nnumpy==2.0\n# a comment\n")
    second = make_request(source, "numpy==2.0\n\nscikit-learn\n")
    assert first.environment_hash == second.environment_hash
    assert render(first) == render(second)
    assert archive(first) == archive(second)
    (source / "train.py").touch()  # a new mtime changes nothing
    assert archive(first) == archive(second)


def test_a_changed_requirement_changes_the_dockerfile(source: Path) -> None:
    assert render(make_request(source, "numpy==2.0\n")) != render(make_request(source, "numpy==2.1\n"))


def test_the_generated_context_holds_the_requirements_and_the_dockerfile_and_no_code(source: Path) -> None:
    files = context_files(make_request(source))
    assert sorted(files) == [DOCKERFILE, REQUIREMENTS]
    assert files[REQUIREMENTS] == b"numpy==2.0\nscikit-learn\n"
    with tarfile.open(fileobj=io.BytesIO(archive(make_request(source))), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(files)
    assert {(m.mtime, m.uid, m.mode) for m in members} == {(0, 0, 0o644)}


def test_the_specs_own_dockerfile_is_used_with_the_code_at_the_context_root(source: Path) -> None:
    (source / "build").mkdir()
    (source / "build" / "Dockerfile").write_text("FROM busybox\nCOPY train.py /app/\n")
    request = make_request(source, dockerfile="build/Dockerfile")
    assert render(request) == "FROM busybox\nCOPY train.py /app/\n"
    files = context_files(request)
    assert "train.py" in files and "build/Dockerfile" in files and REQUIREMENTS not in files
    assert files[DOCKERFILE] == files["build/Dockerfile"]


def test_unpack_writes_the_context(source: Path, tmp_path: Path) -> None:
    dockerfile = unpack(make_request(source), tmp_path / "ctx")
    assert dockerfile == tmp_path / "ctx" / DOCKERFILE
    assert (tmp_path / "ctx" / REQUIREMENTS).read_text() == "numpy==2.0\nscikit-learn\n"
    assert not (tmp_path / "ctx" / "src").exists()


def test_a_code_change_keeps_the_tag_and_an_environment_change_gives_a_new_one(source: Path) -> None:
    before = make_request(source)
    (source / "train.py").write_text("print('train better')\n")
    assert make_request(source).tag == before.tag  # the code is not in the image
    assert make_request(source, "numpy==2.1\nscikit-learn\n").tag != before.tag
    assert make_request(source, python="3.12").tag != before.tag
    other_base = ImagesSpec(registry="r.example:5000", repository="ml", base_image="python:3.11-bookworm")
    assert replace(before, images=other_base).tag != before.tag
    assert before.tag.startswith(f"{before.environment_hash}-") and before.reference.endswith(before.tag)


def test_with_its_own_dockerfile_the_tag_covers_the_dockerfile_and_what_it_copies(source: Path) -> None:
    (source / "Dockerfile").write_text("FROM busybox\nCOPY train.py /app/\n")
    before = make_request(source, dockerfile="Dockerfile")
    assert make_request(source, dockerfile="Dockerfile").tag == before.tag
    (source / "Dockerfile").write_text("FROM busybox:1.37\nCOPY train.py /app/\n")
    changed_dockerfile = make_request(source, dockerfile="Dockerfile")
    assert changed_dockerfile.tag != before.tag
    (source / "train.py").write_text("print('copied into this image')\n")
    assert make_request(source, dockerfile="Dockerfile").tag != changed_dockerfile.tag


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [("../Dockerfile", "must be inside the model's code"), ("missing/Dockerfile", "is not a file")],
)
def test_a_bad_own_dockerfile_is_refused_naming_the_model(
    source: Path, dockerfile: str, message: str
) -> None:
    with pytest.raises(ImageError, match=f"model iris: source.dockerfile .*{message}"):
        render(make_request(source, dockerfile=dockerfile))


def test_a_python_version_that_is_not_major_minor_is_refused(source: Path) -> None:
    with pytest.raises(ImageError, match="python version 'three'"):
        render(make_request(source, python="three"))

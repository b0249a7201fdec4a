"""The image builder interface: tags and references by environment hash, pinned references, the fake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.backends.images import (
    BuiltImage,
    ImageError,
    ImageRequest,
    context_digest,
    image_reference,
    image_tag,
)
from controller.backends.images.fake import FakeImages
from controller.backends.pipelines import environment_hash
from controller.backends.python_env import PythonEnvironment
from controller.specs.types import ImagesSpec

pytestmark = pytest.mark.unit

IMAGES = ImagesSpec(
    registry="registry.example.com:5000", repository="ml/flywheel", base_image="python:3.11-slim"
)
OCI_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")  # the distribution spec's tag grammar


def request(model: str = "iris", requirements: str = "scikit-learn==1.5.2\n") -> ImageRequest:
    python = PythonEnvironment(requirements=requirements, python="3.11")
    return ImageRequest(
        model=model,
        environment_hash=environment_hash(requirements=requirements, python="3.11"),
        source_dir=Path("/src") / model,
        python=python,
        dockerfile=None,
        images=IMAGES,
    )


CONTEXT = context_digest({"Dockerfile.flywheel": b"FROM python:3.11-slim\n"})


def test_the_tag_is_the_environment_hash_and_the_contexts_short_digest() -> None:
    digest = environment_hash(requirements="numpy\n", python="3.11")
    assert image_tag(digest, CONTEXT) == f"{digest}-{CONTEXT[:12]}" and OCI_TAG.fullmatch(digest)
    other = context_digest({"Dockerfile.flywheel": b"FROM python:3.12-slim\n"})
    assert image_tag(digest, other) != image_tag(digest, CONTEXT)


def test_the_context_digest_depends_on_names_and_contents_not_order() -> None:
    files = {"a": b"1", "b": b"2"}
    assert context_digest(files) == context_digest(dict(reversed(files.items())))
    assert context_digest(files) != context_digest({"a": b"1", "c": b"2"})
    assert context_digest({"a": b"12"}) != context_digest({"a1": b"2"})


@pytest.mark.parametrize("raw", ["a/b:c", "-leading", ".dot", "x" * 300, "ünï cödé"])
def test_any_hash_gives_a_valid_tag(raw: str) -> None:
    tag = image_tag(raw, CONTEXT)
    assert OCI_TAG.fullmatch(tag), tag
    assert tag.endswith(CONTEXT[:12])  # a long hash is cut, never the context's digest
    assert image_tag(raw, CONTEXT) == tag  # the same inputs, the same tag


def test_an_empty_hash_or_context_has_no_tag() -> None:
    with pytest.raises(ImageError, match="non-empty environment hash"):
        image_tag("  ", CONTEXT)
    with pytest.raises(ImageError, match="non-empty build context"):
        image_tag("abc", "")


def test_the_reference_names_registry_repository_model_and_tag() -> None:
    assert image_reference(IMAGES, "iris", "abc123") == "registry.example.com:5000/ml/flywheel/iris:abc123"
    assert request().reference == f"registry.example.com:5000/ml/flywheel/iris:{request().tag}"
    assert request().tag.startswith(request().environment_hash + "-")


def test_pinned_adds_the_digest_when_known() -> None:
    image = BuiltImage(reference="r/m:t", digest="sha256:" + "0" * 64, built=True)
    assert image.pinned == "r/m:t@sha256:" + "0" * 64
    assert BuiltImage(reference="r/m:t", digest=None, built=False).pinned == "r/m:t"


def test_the_fake_builds_each_tag_once() -> None:
    images = FakeImages()
    first = images.ensure(request())
    again = images.ensure(request())
    changed = images.ensure(request(requirements="scikit-learn==1.6.0\n"))
    assert (first.built, again.built, changed.built) == (True, False, True)
    assert first.pinned == again.pinned and first.digest and first.digest.startswith("sha256:")
    assert changed.reference != first.reference
    assert images.builds == [first.reference, changed.reference] and len(images.requests) == 3


def test_the_fake_knows_existing_tags_and_fails_when_told() -> None:
    images = FakeImages(existing={request().reference}, failing={"wine": "the build Job failed"})
    assert not images.ensure(request()).built
    with pytest.raises(ImageError, match="the build Job failed"):
        images.ensure(request(model="wine"))
    [job] = images.manifests(request())
    assert job["kind"] == "Job" and request().reference in str(job)

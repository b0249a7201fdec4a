"""The image builder interface: one OCI image per model environment, built only when its tag is missing.

The cluster home runs a model's steps in an image of the model's environment
— its requirements and its Python version on the Environment's base image, or
the model's own Dockerfile — never its code, which reaches the pods from git at
the run's commit. The tag (:func:`image_tag`) covers everything that goes into
the image: the environment hash the embedded home names its virtualenvs with,
then a short digest of the build context (the Dockerfile, which names the base
image, and the files beside it), so the same inputs give the same tag and a
changed requirement, base image or Dockerfile a new one. The argo pipeline runner calls
:meth:`ImageBuilder.ensure` before it submits a Workflow and puts
:attr:`BuiltImage.pinned` into the Workflow's containers; ``flywheel
manifests`` renders the build through :meth:`ImageBuilder.manifests` without
contacting any cluster. The composition root picks the implementation;
:mod:`.fake` stands in for it in tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from controller.backends.python_env import PythonEnvironment
from controller.specs.types import ImagesSpec

__all__ = [
    "BuiltImage",
    "ImageBuilder",
    "ImageError",
    "ImageRequest",
    "context_digest",
    "image_reference",
    "image_tag",
]

MAX_TAG_LENGTH = 128  # the OCI distribution spec's limit
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ImageError(RuntimeError):
    """An image could not be found or built; the message says which and why, in one line."""


@dataclass(frozen=True, kw_only=True)
class ImageRequest:
    """One model environment's image: what goes into it and where it goes.

    ``environment_hash`` is :func:`controller.backends.pipelines.environment_hash`
    of the model's requirements and Python version, the first part of the
    image's tag. ``source_dir`` is the model's code, exported from git, where
    its requirements are read and the spec's own Dockerfile is found:
    ``dockerfile``, when set, is relative to it (``None``: Flywheel generates
    one on ``images.base_image``, and the code stays out of the image).
    """

    model: str
    environment_hash: str
    source_dir: Path
    python: PythonEnvironment
    dockerfile: str | None
    images: ImagesSpec
    namespace: str | None = None  # where a cluster build runs (the pipeline's namespace); None: the builder's

    @cached_property
    def tag(self) -> str:
        """:func:`image_tag` of the environment hash and of this request's build context."""
        from controller.backends.images.dockerfile import context_files  # it builds on this module

        return image_tag(self.environment_hash, context_digest(context_files(self)))

    @property
    def reference(self) -> str:
        return image_reference(self.images, self.model, self.tag)


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """An image the registry has: its reference, its digest when known, and whether it was built now."""

    reference: str  # <registry>/<repository>/<model>:<tag>
    digest: str | None  # sha256:… of the manifest when known
    built: bool  # False: the registry already had the tag, nothing was built

    @property
    def pinned(self) -> str:
        """``reference@digest`` when the digest is known, else ``reference``."""
        return f"{self.reference}@{self.digest}" if self.digest else self.reference


class ImageBuilder(Protocol):
    def ensure(self, request: ImageRequest) -> BuiltImage:
        """The image of ``request``: the registry's when it has the tag, else built and pushed now.

        Raises :class:`ImageError` when the registry cannot be asked or the build fails.
        """
        ...

    def manifests(self, request: ImageRequest) -> list[dict[str, Any]]:
        """The Kubernetes objects (the build Job and what it needs) that would build ``request``, rendered."""
        ...


def context_digest(files: Mapping[str, bytes]) -> str:
    """The sha256 (hex) of a build context given as {path inside it: content}, independent of order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def image_tag(environment_hash: str, context: str) -> str:
    """The tag of an image: ``<environment hash>-<first 12 hex digits of its context's digest>``.

    ``environment_hash`` is the hash the embedded home names the model's
    virtualenv with (requirements and Python version); ``context`` is
    :func:`context_digest` of the build context — the Dockerfile (generated on
    ``images.baseImage``, so it names the base image, or the spec's own) and
    every file built with it (the canonical requirements; with the spec's own
    Dockerfile, the model's code it may copy). The same inputs give the same
    tag; a changed requirement, Python version, base image, Dockerfile or
    context file gives a new one. The result is a valid OCI tag of at most
    128 characters: any character a tag cannot hold becomes ``-``, a tag
    cannot start with ``.`` or ``-``, and a long hash is cut before the
    context's digest, which is always kept.
    """
    suffix = _TAG_CHARS.sub("-", context.strip())[:12]
    if not suffix:
        raise ImageError("an image tag needs a non-empty build context digest")
    tag = _TAG_CHARS.sub("-", environment_hash.strip())[: MAX_TAG_LENGTH - len(suffix) - 2]
    if not tag:
        raise ImageError("an image tag needs a non-empty environment hash")
    if tag[0] in ".-":
        tag = "_" + tag
    return f"{tag}-{suffix}"


def image_reference(images: ImagesSpec, model: str, tag: str) -> str:
    """``<registry>/<repository>/<model>:<tag>`` of a model's image with ``tag`` (:func:`image_tag`)."""
    return f"{images.registry}/{images.repository.strip('/')}/{model}:{tag}"

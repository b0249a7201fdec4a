"""The image builder interface: one OCI image per model environment, built only when its tag is missing.

The cluster home runs a model's steps in an image made from the model's code,
its requirements and its Python version, on the Environment's base image (or
from the model's own Dockerfile), and tagged by the environment hash the
embedded home names its virtualenvs with (:func:`image_tag`), so the same
inputs give the same tag in both homes. The argo pipeline runner calls
:meth:`ImageBuilder.ensure` before it submits a Workflow and puts
:attr:`BuiltImage.pinned` into the Workflow's containers; ``flywheel
manifests`` renders the build through :meth:`ImageBuilder.manifests` without
contacting any cluster. The composition root picks the implementation;
:mod:`.fake` stands in for it in tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.backends.python_env import PythonEnvironment
from controller.specs.types import ImagesSpec

__all__ = [
    "BuiltImage",
    "ImageBuilder",
    "ImageError",
    "ImageRequest",
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
    of the model's requirements and Python version, and the image's tag.
    ``source_dir`` is the model's code, exported from git; ``dockerfile``, when
    set, is the spec's own Dockerfile relative to it (``None``: Flywheel
    generates one on ``images.base_image``).
    """

    model: str
    environment_hash: str
    source_dir: Path
    python: PythonEnvironment
    dockerfile: str | None
    images: ImagesSpec

    @property
    def tag(self) -> str:
        return image_tag(self.environment_hash)

    @property
    def reference(self) -> str:
        return image_reference(self.images, self.model, self.environment_hash)


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


def image_tag(environment_hash: str) -> str:
    """The tag of the image for ``environment_hash``: a valid OCI tag of at most 128 characters.

    A hash (hex digits) is its own tag; any other character an OCI tag cannot
    hold becomes ``-``, and a tag cannot start with ``.`` or ``-``.
    """
    tag = _TAG_CHARS.sub("-", environment_hash.strip())[:MAX_TAG_LENGTH]
    if not tag:
        raise ImageError("an image tag needs a non-empty environment hash")
    if tag[0] in ".-":
        tag = ("_" + tag)[:MAX_TAG_LENGTH]
    return tag


def image_reference(images: ImagesSpec, model: str, environment_hash: str) -> str:
    """``<registry>/<repository>/<model>:<tag>`` of a model's image for ``environment_hash``."""
    return f"{images.registry}/{images.repository.strip('/')}/{model}:{image_tag(environment_hash)}"

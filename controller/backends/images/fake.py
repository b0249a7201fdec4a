"""An image builder for tests and the demo: remembers which tags exist, builds nothing.

``FakeImages`` keeps the interface's rules: the first :meth:`~FakeImages.ensure`
of a reference says ``built=True``, every later one ``built=False`` (the
registry has the tag now); a tag named in ``existing`` was there from the
start. The digest is derived from the reference, so the same image always
has the same digest. A model named in ``failing`` raises :class:`ImageError`.
Every request is recorded for tests to assert on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from controller.backends.images import BuiltImage, ImageError, ImageRequest


@dataclass
class FakeImages:
    existing: set[str] = field(default_factory=set)  # references the registry has
    failing: dict[str, str] = field(default_factory=dict)  # model -> why its build fails
    requests: list[ImageRequest] = field(default_factory=list)
    builds: list[str] = field(default_factory=list)  # references built, in order

    def ensure(self, request: ImageRequest) -> BuiltImage:
        self.requests.append(request)
        reference = request.reference
        if request.model in self.failing:
            raise ImageError(f"image {reference}: {self.failing[request.model]}")
        built = reference not in self.existing
        if built:
            self.existing.add(reference)
            self.builds.append(reference)
        return BuiltImage(reference=reference, digest=self.digest(reference), built=built)

    def manifests(self, request: ImageRequest) -> list[dict[str, Any]]:
        name = f"build-{request.model}-{request.tag}"[:63].rstrip("-.")
        return [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": {"flywheel.dev/model": request.model}},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "build", "image": "fake-builder", "args": [request.reference]}
                            ],
                        }
                    },
                },
            }
        ]

    @staticmethod
    def digest(reference: str) -> str:
        """The digest this fake gives ``reference``: the same every time."""
        return "sha256:" + hashlib.sha256(reference.encode()).hexdigest()

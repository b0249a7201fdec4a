"""Identity of things: the cache key of a run.

A run's cache key is a digest of everything that can change its result: the
git tree id of the model's source directory, the spec's pipeline and params,
the data fingerprints and the environment hash. Same key, same result, so a
key that already has a successful run reuses it and runs nothing.

What does *not* go in: timeouts, retries and resources (they change whether a
run finishes, not what it produces), the spec's gates and rollout (judged on
the result, not part of it), and the commit id (a commit that does not touch
the model's inputs must hit the cache).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.specs.types import Model

CACHE_KEY_VERSION = 1  # bump when the recipe below changes, so old keys stop matching


@dataclass(frozen=True)
class RunInputs:
    """Everything a run's result depends on, as the controller resolved it for one commit."""

    model: str
    source_tree: str  # git tree id of the model's source directory
    requirements_blob: str | None  # git blob id of its requirements file (may live outside the source dir)
    params: Mapping[str, Any]
    pipeline: tuple[Mapping[str, Any], ...]
    data_fingerprints: Mapping[str, str]  # data input name -> fingerprint
    environment_hash: str

    @property
    def cache_key(self) -> str:
        document = {
            "v": CACHE_KEY_VERSION,
            "model": self.model,
            "source_tree": self.source_tree,
            "requirements_blob": self.requirements_blob,
            "params": self.params,
            "pipeline": list(self.pipeline),
            "data": dict(sorted(self.data_fingerprints.items())),
            "environment": self.environment_hash,
        }
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def pipeline_identity(model: Model) -> tuple[Mapping[str, Any], ...]:
    """The parts of the pipeline that can change what it produces."""
    return tuple(
        {"name": step.name, "run": step.run, "needs": sorted(step.needs), "env": sorted(step.env)}
        for step in model.steps
    )

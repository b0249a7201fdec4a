"""A model's Python environment: what its code needs, and the name every home gives it.

A model's environment is fixed by its requirements file, its Python version
and the platform. :class:`PythonEnvironment` holds them; its
:attr:`~PythonEnvironment.hash` names the environment whatever builds it: the
embedded home's virtualenv (:mod:`controller.backends.local.venvs`) today,
and the image the cluster home will tag with the same hash. The engine puts
the hash in a run's cache key and in a model version's record (through
:func:`controller.backends.pipelines.environment_hash`); the serving backends
get the environment itself with each :class:`~controller.backends.serving.ServedVersion`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sysconfig
from dataclasses import dataclass

__all__ = ["PythonEnvironment", "environment_hash"]

_HASH_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class PythonEnvironment:
    requirements: str  # the content of the requirements file
    python: str = "3.11"  # "3.11" or "3.11.7"
    platform: str = sysconfig.get_platform()

    def canonical_requirements(self) -> tuple[str, ...]:
        """Requirement lines without comments, blank lines, duplicates or order.

        Two files that ask for the same packages give the same environment.
        """
        lines: set[str] = set()
        for raw in self.requirements.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw).strip()
            if line:
                lines.add(" ".join(line.split()))
        return tuple(sorted(lines))

    @property
    def hash(self) -> str:
        return environment_hash(self)


def environment_hash(environment: PythonEnvironment) -> str:
    """sha256 hex digest of the canonicalised requirements, Python version and platform."""
    canonical = {
        "format": _HASH_FORMAT,
        "python": environment.python.strip(),
        "platform": environment.platform,
        "requirements": list(environment.canonical_requirements()),
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()

"""Where the drift trigger reads a served model's drift: the version with the most traffic and its table.

The composition root (:mod:`controller.app`) gives the trigger engine
(:mod:`controller.engine.triggers`) a :class:`ServedDrift` over the serving
backends by name. On the embedded home the environment's router keeps the
live windows (:mod:`.drift_watch`): what it routes says which version serves,
and its ``GET /-/drift`` gives that version's table. An environment served by
a backend without windows of its own fails with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.backends.serving import ServingBackend, ServingError
from controller.backends.serving.local import LocalServing
from controller.drift import DriftReport
from controller.specs.types import Environment

__all__ = ["ServedDrift", "serving_version"]


def serving_version(routes: Mapping[str, int]) -> str | None:
    """The version that gets the most traffic (the greater label on a tie); ``None`` when none gets any."""
    routed = [(weight, version) for version, weight in routes.items() if weight > 0]
    return max(routed)[1] if routed else None


class ServedDrift:
    """The drift trigger's :class:`~controller.engine.triggers.DriftReader`."""

    def __init__(self, backends: Mapping[str, ServingBackend]) -> None:
        self.backends = backends

    def production(self, *, environment: Environment, model: str) -> tuple[str | None, DriftReport | None]:
        backend = self.backends.get(environment.serving_backend)
        if not isinstance(backend, LocalServing):
            raise ServingError(
                f"environment {environment.name!r} is served by {environment.serving_backend!r}, whose live "
                "windows this controller does not read"
            )
        observed = backend.observe(environment=environment)
        if not observed.known:
            raise ServingError(f"what serves {environment.name} cannot be read: {observed.unknown}")
        version = serving_version(observed.routes.get(model, {}))
        if version is None:
            return None, None
        for entry in backend.drift(environment=environment, model=model).get("versions", []):
            if entry.get("version") == version:
                try:
                    return version, DriftReport.from_json(entry)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ServingError(f"the router of {environment.name} answered an unreadable drift "
                                       f"table for {model} {version}: {exc}") from exc
        return version, None

"""Serving by name: the one :class:`ServingBackend` the engine gets.

Each call goes to the backend its environment names.

The composition root (:func:`controller.app.build_controller`) builds it from
the serving backends this controller has (``local`` on one machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.backends.serving import (
    DeployedVersion,
    ObservedServing,
    ServedVersion,
    ServingBackend,
    ServingError,
)
from controller.backends.serving.local import LocalServing
from controller.specs.types import Environment


def serving_backend(environment: Environment, backends: Mapping[str, ServingBackend]) -> ServingBackend:
    """The backend ``environment`` names; :class:`ServingError` when there is none by that name."""
    backend = backends.get(environment.serving_backend)
    if backend is None:
        have = ", ".join(sorted(backends)) or "none"
        raise ServingError(
            f"environment {environment.name!r} names serving backend {environment.serving_backend!r}, "
            f"which this controller does not have (it has: {have})"
        )
    return backend


class ServingByName:
    """The :class:`ServingBackend` the engine gets: each call goes to the backend its environment names.

    An environment that names a backend this controller does not have is
    never served by another one: whatever would serve it (deploy, smoke test,
    routing traffic, its endpoint or its router's metrics) raises
    :class:`ServingError` naming the environment and the backend, so a
    rollout there fails with that reason. What would only undo serving there
    finds nothing to undo, since nothing was ever served through a backend
    this controller does not have: no version is deployed, routing no traffic
    and retiring a version do nothing.
    """

    def __init__(self, backends: Mapping[str, ServingBackend]) -> None:
        self.backends = dict(backends)

    def _has(self, environment: Environment) -> bool:
        return environment.serving_backend in self.backends

    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        serving_backend(environment, self.backends).deploy(environment=environment, version=version)

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        if not weights and not self._has(environment):
            return  # nothing is routed there: nothing to stop
        backend = serving_backend(environment, self.backends)
        backend.set_weights(environment=environment, model=model, weights=weights)

    def retire(self, *, environment: Environment, model: str, version: str) -> None:
        if self._has(environment):
            self.backends[environment.serving_backend].retire(
                environment=environment, model=model, version=version
            )

    def smoke_test(
        self, *, environment: Environment, model: str, version: str, inputs: Sequence[Sequence[object]]
    ) -> None:
        backend = serving_backend(environment, self.backends)
        backend.smoke_test(environment=environment, model=model, version=version, inputs=inputs)

    def deployed(self, *, environment: Environment, model: str) -> Sequence[DeployedVersion]:
        if not self._has(environment):
            return ()
        return self.backends[environment.serving_backend].deployed(environment=environment, model=model)

    def observe(self, *, environment: Environment) -> ObservedServing:
        try:
            backend = serving_backend(environment, self.backends)
        except ServingError as exc:  # what serves there cannot be read: unknown, never "nothing"
            return ObservedServing(environment=environment.name, unknown=str(exc))
        return backend.observe(environment=environment)

    def endpoint(self, *, environment: Environment, model: str) -> str:
        return serving_backend(environment, self.backends).endpoint(environment=environment, model=model)

    def shutdown(self) -> None:
        for backend in self.backends.values():
            backend.shutdown()

    def router_metrics_url(self, environment: Environment) -> str:
        """Where the built-in metrics source reads ``environment``'s traffic: its local router's metrics.

        Raises :class:`ServingError` when the environment names a serving
        backend this controller does not have, or one without a router of its
        own (its metrics then come from Prometheus: ``metrics.source``).
        """
        backend = serving_backend(environment, self.backends)
        if not isinstance(backend, LocalServing):
            raise ServingError(
                f"environment {environment.name!r} is served by {environment.serving_backend!r}, which has "
                "no router for the built-in metrics source to read; give it metrics.source: prometheus"
            )
        return backend.metrics_url(environment=environment)

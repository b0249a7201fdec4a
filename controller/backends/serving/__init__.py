"""The serving interface: run model versions and split one environment's traffic between them.

The rollout engine calls :class:`ServingBackend` to put a registered model
version behind an environment's endpoint (:meth:`~ServingBackend.deploy`),
to shift traffic between versions during a canary
(:meth:`~ServingBackend.set_weights`) and to stop a version that no longer
serves (:meth:`~ServingBackend.retire`); the serving watch
(:mod:`controller.engine.observed`) reads what actually serves
(:meth:`~ServingBackend.observe`) to compare it with the store. The Protocol speaks of model
versions (:class:`ServedVersion`: the artifact's location, the model's Python
environment, its serving runtime), environments and weights; how a home runs
them is its own. :mod:`.local` implements it for the embedded home (one model
server process per version, a weighted router per environment) and :mod:`.fake`
records the calls in memory for engine tests; the cluster home will plug in
behind the same Protocol. The composition root (:mod:`controller.app`) hands
each environment to the backend its ``serving.backend`` names.

Every method with a side effect is idempotent: the engine repeats a call after
a crash without knowing whether the first one took effect, so deploying a
version that already runs healthy starts nothing, and setting the weights that
are already set changes nothing.

Clients send Open Inference Protocol v2 requests to :meth:`~ServingBackend.endpoint`;
a server for one version honours the serving contract (README.md, "Serving on one machine")
(``/v2/health/ready``, ``/v2/models/{name}/ready``, ``/v2/models/{name}/infer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.backends.python_env import PythonEnvironment
from controller.specs.types import Environment, Serving

__all__ = [
    "DeployedVersion",
    "ObservedServing",
    "ServedVersion",
    "ServingBackend",
    "ServingError",
    "check_weights",
    "inference_request",
]


class ServingError(RuntimeError):
    """A version could not be deployed, routed or retired; the message says why (and shows the log tail)."""


@dataclass(frozen=True, kw_only=True)
class ServedVersion:
    """One immutable model version, as a serving backend needs it.

    ``artifact_uri`` locates what the train step wrote into
    ``FLYWHEEL_MODEL_DIR`` (for the sklearn runtime: ``model.joblib`` and
    ``model-settings.json``): a local path on the embedded home, a URI where
    artifacts live in an object store. It is only read, never changed.

    ``environment`` is the model's Python environment (its requirements and
    Python version). A backend serves a built-in runtime (MLServer for
    ``sklearn``/``xgboost``) from it with the runtime's server packages
    added, and runs a custom server command in it; without one a custom
    command runs with the controller's own ``PATH`` (tests). ``source_uri``
    locates the model's code at the version's commit, the working directory
    of a custom server command (the artifact's when not given).
    """

    model: str
    version: str  # the version label, e.g. "v3"
    serving: Serving
    artifact_uri: str
    environment: PythonEnvironment | None = None
    source_uri: str | None = None
    image: str | None = None  # reference@digest of the image its run ran in (cluster home); None: none


@dataclass(frozen=True, kw_only=True)
class DeployedVersion:
    """A version that runs in an environment, and the share of traffic it gets now."""

    model: str
    version: str
    url: str  # the version's own base URL, around the traffic split
    weight: int  # percent of the model's traffic, 0 when not routed
    started_at: float = 0.0  # unix time


@dataclass(frozen=True, kw_only=True)
class ObservedServing:
    """What actually serves one environment, as its router (or cluster) reports it now.

    ``routes`` is model → version label → percent as the router routes
    traffic; ``live`` is model → the labels of the versions whose server runs
    and answers ready. ``unknown`` says why nothing could be read (the router
    is down or does not answer as ours): then ``routes`` and ``live`` are
    empty and mean nothing, which is never the same as "nothing serves".
    """

    environment: str
    routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    live: Mapping[str, frozenset[str]] = field(default_factory=dict)
    unknown: str | None = None

    @property
    def known(self) -> bool:
        return self.unknown is None


class ServingBackend(Protocol):
    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        """Run a server for ``version`` unless one runs healthy already; return once it is ready.

        Raises :class:`ServingError`, with the tail of the server's log, when
        the server does not become ready in time. A deployed version gets no
        traffic until :meth:`set_weights` gives it some.
        """
        ...

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        """Route ``model``'s traffic: version label → percent, summing to 100.

        Every version named must be deployed and pass its health check now;
        versions left out get no traffic. An empty mapping stops routing the
        model.
        """
        ...

    def retire(self, *, environment: Environment, model: str, version: str) -> None:
        """Stop the server of ``version``; nothing happens when it does not run.

        Raises :class:`ServingError` when the version still gets traffic.
        """
        ...

    def smoke_test(
        self, *, environment: Environment, model: str, version: str, inputs: Sequence[Sequence[object]]
    ) -> None:
        """Send ``inputs`` (rows of features) to ``version``'s own server as one OIP v2 inference request.

        Raises :class:`ServingError` saying what went wrong unless the server
        answers 200 with one output row per input row. Empty ``inputs`` only
        checks readiness.
        """
        ...

    def deployed(self, *, environment: Environment, model: str) -> Sequence[DeployedVersion]:
        """The versions of ``model`` that run in ``environment``, with their current weights."""
        ...

    def observe(self, *, environment: Environment) -> ObservedServing:
        """Read what serves ``environment`` now, from the router or cluster itself; changes nothing.

        Never raises for an outage: a router that is down or does not answer
        gives an observation whose ``unknown`` says why.
        """
        ...

    def endpoint(self, *, environment: Environment, model: str) -> str:
        """Base URL of the model for clients: append ``/infer`` (or ``/ready``) for OIP v2 calls."""
        ...

    def shutdown(self) -> None:
        """Stop everything this backend runs (tests and the demo; the controller leaves servers running)."""
        ...


def inference_request(inputs: Sequence[Sequence[object]]) -> dict[str, object]:
    """An OIP v2 request body for rows of numeric features (one FP64 tensor ``[rows, columns]``)."""
    rows = [list(row) for row in inputs]
    width = len(rows[0]) if rows else 0
    data = [float(value) for row in rows for value in row]  # type: ignore[arg-type]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), width], "datatype": "FP64", "data": data}]}


def check_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """``weights`` as a plain dict, or :class:`ServingError` unless they are percentages summing to 100.

    An empty mapping is valid: it means the model gets no traffic.
    """
    result: dict[str, int] = {}
    for version, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ServingError(f"weight of {version} must be an integer percent 0..100, got {weight!r}")
        result[version] = weight
    if result and sum(result.values()) != 100:
        raise ServingError(f"weights must sum to 100, got {sum(result.values())}: {result}")
    return result

"""An in-memory serving backend for engine tests: records every call and counts real side effects.

:class:`FakeServing` keeps the same rules as the real backends (weights sum
to 100 and name deployed, ready versions; a version with traffic cannot be
retired; repeating a call changes nothing), so the rollout engine's tests can
assert both the calls it made and their effect: ``starts`` counts servers
actually started, which a crash-and-resume test expects to stay at one per
version however often ``deploy`` was repeated.

``fail_deploy`` makes the next deploys of the given ``(model, version)``
raise :class:`~controller.backends.serving.ServingError`, like a server whose
health check never passes; ``unready`` marks versions whose server runs but
fails its readiness check, so ``set_weights`` refuses them.

What serves can change behind the backend's back, as on a real machine:
:meth:`FakeServing.kill` ends a server without telling anyone (the router
still routes to it), and an environment in ``unreachable`` has a router that
does not answer, so :meth:`~FakeServing.observe` reports it unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.backends.serving import (
    DeployedVersion,
    ObservedServing,
    ServedVersion,
    ServingError,
    check_weights,
)
from controller.specs.types import Environment

__all__ = ["FakeServing", "ServingCall"]


@dataclass(frozen=True)
class ServingCall:
    method: str  # deploy | set_weights | retire | smoke_test (observe only reads: not recorded)
    environment: str
    model: str
    version: str = ""  # deploy and retire
    weights: tuple[tuple[str, int], ...] = ()  # set_weights, sorted by version


@dataclass
class FakeServing:
    calls: list[ServingCall] = field(default_factory=list)
    running: dict[tuple[str, str, str], ServedVersion] = field(default_factory=dict)  # (env, model, version)
    weights: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # (env, model) -> weights
    starts: int = 0  # servers started, over the fake's life
    stops: int = 0  # servers stopped
    weight_changes: int = 0  # set_weights calls that changed the routing
    fail_deploy: set[tuple[str, str]] = field(default_factory=set)  # (model, version)
    unready: set[tuple[str, str]] = field(default_factory=set)  # (model, version)
    fail_smoke: set[tuple[str, str]] = field(default_factory=set)  # (model, version)
    unreachable: set[str] = field(default_factory=set)  # environments whose router does not answer
    base_url: str = "http://fake-router.invalid"

    # --------------------------------------------------------- the Protocol

    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        self.calls.append(ServingCall("deploy", environment.name, version.model, version.version))
        key = (environment.name, version.model, version.version)
        if key in self.running:
            return
        if (version.model, version.version) in self.fail_deploy:
            raise ServingError(f"the server of {version.model} {version.version} was not ready (fake)")
        self.running[key] = version
        self.starts += 1

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        checked = check_weights(weights)
        self.calls.append(
            ServingCall("set_weights", environment.name, model, weights=tuple(sorted(checked.items())))
        )
        if environment.name in self.unreachable:
            raise ServingError(f"the router of {environment.name} did not answer (fake)")
        for label in checked:
            if (environment.name, model, label) not in self.running:
                raise ServingError(f"version {label} of {model} is not deployed in {environment.name}")
            if (model, label) in self.unready:
                raise ServingError(f"version {label} of {model} in {environment.name} is not ready")
        if self.weights.get((environment.name, model), {}) != checked:
            self.weight_changes += 1
        if checked:
            self.weights[(environment.name, model)] = checked
        else:
            self.weights.pop((environment.name, model), None)

    def retire(self, *, environment: Environment, model: str, version: str) -> None:
        self.calls.append(ServingCall("retire", environment.name, model, version))
        routed = self.weights.get((environment.name, model), {})
        if routed.get(version, 0) > 0:
            raise ServingError(f"version {version} of {model} still gets {routed[version]}% of the traffic")
        routed.pop(version, None)
        if self.running.pop((environment.name, model, version), None) is not None:
            self.stops += 1

    def smoke_test(
        self, *, environment: Environment, model: str, version: str, inputs: Sequence[Sequence[object]]
    ) -> None:
        self.calls.append(ServingCall("smoke_test", environment.name, model, version))
        if (environment.name, model, version) not in self.running:
            raise ServingError(f"version {version} of {model} is not running in {environment.name} (fake)")
        if (model, version) in self.fail_smoke:
            raise ServingError(f"smoke test of {model} {version}: HTTP 500 (fake)")

    def deployed(self, *, environment: Environment, model: str) -> Sequence[DeployedVersion]:
        routed = self.weights.get((environment.name, model), {})
        return tuple(
            DeployedVersion(
                model=m, version=v, url=f"{self.base_url}/{env}/{m}/{v}", weight=routed.get(v, 0)
            )
            for (env, m, v) in sorted(self.running)
            if env == environment.name and m == model
        )

    def observe(self, *, environment: Environment) -> ObservedServing:
        if environment.name in self.unreachable:
            return ObservedServing(environment=environment.name, unknown="the router does not answer (fake)")
        routes = {m: dict(w) for (env, m), w in self.weights.items() if env == environment.name}
        live: dict[str, set[str]] = {}
        for env, m, v in self.running:
            if env == environment.name and (m, v) not in self.unready:
                live.setdefault(m, set()).add(v)
        return ObservedServing(
            environment=environment.name,
            routes=routes,
            live={m: frozenset(versions) for m, versions in live.items()},
        )

    def endpoint(self, *, environment: Environment, model: str) -> str:
        return f"{self.base_url}/{environment.name}/v2/models/{model}"

    def shutdown(self) -> None:
        self.stops += len(self.running)
        self.running.clear()
        self.weights.clear()

    # ------------------------------------------------------------- helpers

    def kill(self, environment: str, model: str, version: str) -> None:
        """The server of ``version`` dies behind the backend's back: the router still routes to it."""
        self.running.pop((environment, model, version), None)

    def count(self, method: str, *, model: str | None = None, version: str | None = None) -> int:
        """How many times ``method`` was called (for ``model``/``version`` when given)."""
        return sum(
            1
            for call in self.calls
            if call.method == method
            and (model is None or call.model == model)
            and (version is None or call.version == version)
        )

    def traffic(self, environment: str, model: str) -> dict[str, int]:
        """The current weights of ``model`` in ``environment`` (empty when not routed)."""
        return dict(self.weights.get((environment, model), {}))

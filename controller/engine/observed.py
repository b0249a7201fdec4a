"""Observed state wins: what actually serves, compared with what the store says serves.

The controller's loop calls :meth:`ServingWatch.tick` on start and on every
tick, before the rollouts advance. For each model on main and each
environment of its rollout it reads what serves there now
(:meth:`~controller.backends.serving.ServingBackend.observe`: the router's
routes and the live servers) and compares it with the store's view (the
traffic the serving records say each version takes, and the active
rollout's state) with the pure :func:`compare`. What differs is a
:class:`Discrepancy`, of one of four kinds:

``missing``     a version the store says takes traffic is not routed, or its server does not run;
``unexpected``  a version takes traffic (or runs) that the store does not expect;
``weights``     the same versions serve, with other weights than the store's;
``unknown``     what serves could not be read (the router is down or does not answer):
                never taken for "nothing serves".

A model's first version in an environment may take all of its traffic
before its rollout routes it: a backend that deploys a first version whole
(KServe does) routes it as it deploys it. That, and only that, is expected
while the rollout deploys it or waits at its gate.

Each new discrepancy is audited once (``serving.discrepancy``, with what was
expected and what was observed) and announced once through the outbox
(``serving_discrepancy``); when it goes away it is audited
``serving.reconciled``. Nothing is re-deployed or re-routed to make it go
away: that is for people (``flywheel serving start``, a rollback). Meanwhile
a rollout in that environment holds (:meth:`ServingWatch.holding`, read by
the rollout engine; see :mod:`controller.engine.rollout_plan`).

The open discrepancies are the audit log's: :func:`open_discrepancies` reads
them back, so a restarted controller neither announces one again nor forgets
to clear it, and ``flywheel status`` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.backends.notify import RolloutEvent
from controller.backends.serving import ObservedServing, ServingBackend
from controller.backends.store import AuditEntry, AuditLog, Outbox, RolloutRecords, Transactions
from controller.backends.store.common import JSONObject
from controller.clock import Clock
from controller.engine.notices import queue_event
from controller.engine.rollout_state import RolloutState, label, load_state
from controller.specs.types import Catalog, Environment

__all__ = [
    "DISCREPANCY",
    "RECONCILED",
    "Discrepancy",
    "Expected",
    "ServingWatch",
    "compare",
    "expected_serving",
    "open_discrepancies",
]

log = logging.getLogger("flywheel.observed")

DISCREPANCY = "serving.discrepancy"
RECONCILED = "serving.reconciled"
ACTOR = "flywheel"

Kind = Literal["missing", "unexpected", "weights", "unknown"]
_SETTLING_PHASES = frozenset({"promote", "rolling_back"})
_FIRST_PHASES = frozenset({"deploy", "gate"})  # a first deployment's phases before it is routed


@dataclass(frozen=True)
class Discrepancy:
    """One way what serves differs from what the store says; ``message`` says it for people."""

    environment: str
    model: str
    kind: Kind
    version: str | None  # the version label it is about; None for ``weights`` and ``unknown``
    message: str
    expected: Mapping[str, int] = field(default_factory=dict)  # the store's weights, by version label
    observed: Mapping[str, int] | None = None  # the router's weights; None when unknown

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies it across ticks (its wording and figures may change while it lasts)."""
        return (self.environment, self.model, self.kind, self.version or "")

    def to_json(self) -> JSONObject:
        return {
            "environment": self.environment,
            "model": self.model,
            "kind": self.kind,
            "version": self.version,
            "message": self.message,
            "expected": dict(self.expected),
            "observed": dict(self.observed) if self.observed is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Discrepancy:
        observed = data.get("observed")
        kind = str(data.get("kind"))
        return cls(
            environment=str(data.get("environment")),
            model=str(data.get("model")),
            kind=kind if kind in ("missing", "unexpected", "weights") else "unknown",  # type: ignore[arg-type]
            version=str(data["version"]) if data.get("version") is not None else None,
            message=str(data.get("message", "")),
            expected={str(k): int(v) for k, v in dict(data.get("expected") or {}).items()},
            observed={str(k): int(v) for k, v in dict(observed).items()} if observed is not None else None,
        )


@dataclass(frozen=True)
class Expected:
    """The store's view of one model in one environment."""

    environment: str
    model: str
    weights: Mapping[str, int]  # version label -> percent, only versions with traffic
    allowed: frozenset[str] = frozenset()  # versions that may run without traffic (an active rollout's)
    settling: bool = False  # an active rollout moves the traffic right now: weights are not compared
    # a first deployment here, before the rollout routes it: a backend that routes a model's first version
    # whole as it deploys it (KServe does) may already give it all the traffic
    whole: str | None = None


def expected_serving(
    *, environment: str, model: str, served: Iterable[tuple[int, int]], rollout: RolloutState | None
) -> Expected:
    """The store's view: ``served`` is (version, percent) from the serving records; ``rollout`` the
    model's active rollout, if any."""
    weights = {label(version): weight for version, weight in served if weight > 0}
    if rollout is None or rollout.environment != environment:
        return Expected(environment, model, weights)
    routing = rollout.phase == "canary" and (rollout.canary is None or not rollout.canary.routed)
    settling = rollout.phase in _SETTLING_PHASES or routing
    first = rollout.stable is None and not weights and rollout.phase in _FIRST_PHASES
    whole = label(rollout.version) if first else None
    return Expected(environment, model, weights, frozenset({label(rollout.version)}), settling, whole)


def compare(expected: Expected, observed: ObservedServing) -> tuple[Discrepancy, ...]:
    """What differs between the store's view of one model in one environment and what serves there."""
    env, model, want = expected.environment, expected.model, dict(expected.weights)

    def found(kind: Kind, version: str | None, message: str, seen: Mapping[str, int] | None) -> Discrepancy:
        return Discrepancy(env, model, kind, version, message, want, seen)

    if not observed.known:
        if not want and not expected.allowed:
            return ()  # nothing is expected here: a router that never started is no news
        return (found("unknown", None, f"what serves {model} in {env} is unknown: {observed.unknown}", None),)
    routes = dict(observed.routes.get(model, {}))
    routed = {version: weight for version, weight in routes.items() if weight > 0}
    live = observed.live.get(model, frozenset())
    if expected.whole is not None and not want and routed == {expected.whole: 100}:
        want = dict(routed)  # the first version, routed whole by the backend as it was deployed
    result: list[Discrepancy] = []
    for version, weight in sorted(want.items()):
        should = f"{model} {version} should take {weight}% of {env}"
        if version not in live:
            why = f"{should}, but its server does not run or is not ready"
            result.append(found("missing", version, why, routed))
        elif version not in routed and not expected.settling:
            result.append(found("missing", version, f"{should}, but it is not routed", routed))
    if not expected.settling:
        for version, weight in sorted(routed.items()):
            if version not in want:
                why = f"{model} {version} takes {weight}% of {env}, which the store does not expect"
                result.append(found("unexpected", version, why, routed))
    for version in sorted(live - want.keys() - routed.keys() - expected.allowed):
        why = f"{model} {version} runs in {env} without traffic, not expected"
        result.append(found("unexpected", version, why, routed))
    if not result and not expected.settling and routed != want:
        shown = ", ".join(f"{v}: {routed[v]}% (store: {want[v]}%)" for v in sorted(want))
        why = f"{model} in {env} is routed otherwise than recorded: {shown}"
        result.append(found("weights", None, why, routed))
    return tuple(result)


def open_discrepancies(entries: Iterable[AuditEntry]) -> dict[tuple[str, str, str, str], Discrepancy]:
    """The discrepancies the audit log says are open (reported, not reconciled), oldest entries first."""
    opened: dict[tuple[str, str, str, str], Discrepancy] = {}
    for entry in entries:
        if entry.action not in (DISCREPANCY, RECONCILED):
            continue
        discrepancy = Discrepancy.from_json(entry.detail)
        if entry.action == DISCREPANCY:
            opened[discrepancy.key] = discrepancy
        else:
            opened.pop(discrepancy.key, None)
    return opened


@dataclass(kw_only=True, eq=False)
class ServingWatch:
    """Compares what serves with the store every tick; reports, audits and clears discrepancies.

    ``catalog`` returns main's specs now (which models, which environments).
    Of the store it reads the traffic history and the active rollouts
    (``rollouts``), reads and appends the audit log, queues notices in the
    outbox, and writes a notice with its audit entry in one ``transactions``.
    """

    rollouts: RolloutRecords
    audit: AuditLog
    outbox: Outbox
    transactions: Transactions
    serving: ServingBackend
    catalog: Callable[[], Catalog]
    clock: Clock
    _open: dict[tuple[str, str, str, str], Discrepancy] | None = field(default=None, init=False, repr=False)
    _reported: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False)

    def holding(self, environment: str, model: str) -> tuple[str, ...]:
        """Why a rollout of ``model`` in ``environment`` must hold now: its open discrepancies' messages."""
        return tuple(
            d.message for d in (self._open or {}).values() if (d.environment, d.model) == (environment, model)
        )

    def current(self) -> tuple[Discrepancy, ...]:
        """The open discrepancies, as of the last tick."""
        return tuple(self._open.values()) if self._open is not None else ()

    def tick(self) -> tuple[Discrepancy, ...]:
        """Observe every watched environment, report what is new, clear what went away; the open ones."""
        if self._open is None:
            self._load()
        assert self._open is not None
        catalog = self.catalog()
        now = self.clock.now()
        rollouts = {r.model: load_state(r) for r in self.rollouts.active_rollouts()}
        found: dict[tuple[str, str, str, str], Discrepancy] = {}
        watched: set[tuple[str, str]] = set()
        for environment, models in _watched(catalog, rollouts):
            observed = self._observe(environment)
            served_in = self.rollouts.served_in(environment=environment.name, at=now)  # one read for all
            for model in models:
                served = served_in.get(model, [])
                watched.add((environment.name, model))
                idle = not served and model not in rollouts
                if idle and model not in observed.routes and model not in observed.live:
                    continue  # nothing expected, nothing serving: compare() would find nothing
                expected = expected_serving(
                    environment=environment.name, model=model, served=served, rollout=rollouts.get(model)
                )
                found.update((d.key, d) for d in compare(expected, observed))
        for key, discrepancy in found.items():
            if key not in self._open:
                self._report(discrepancy, rollouts.get(discrepancy.model))
        for key, discrepancy in list(self._open.items()):
            if key not in found and key[:2] in watched:
                self._clear(discrepancy)
        still = {k: d for k, d in self._open.items() if k[:2] not in watched}
        self._open = {**still, **{k: self._open.get(k, d) for k, d in found.items()}}
        return tuple(self._open.values())

    def _observe(self, environment: Environment) -> ObservedServing:
        try:
            return self.serving.observe(environment=environment)
        except Exception as exc:  # a backend must not raise here; if it does, nothing is known
            log.exception("observing %s failed", environment.name)
            return ObservedServing(environment=environment.name, unknown=f"observing it failed: {exc}")

    def _load(self) -> None:
        entries = [e for e in self.audit.audit() if e.action in (DISCREPANCY, RECONCILED)]
        self._open = open_discrepancies(entries)
        for entry in entries:
            if entry.action == DISCREPANCY:
                where = (entry.environment or "", entry.model or "")
                self._reported[where] = self._reported.get(where, 0) + 1

    def _report(self, discrepancy: Discrepancy, rollout: RolloutState | None) -> None:
        where = (discrepancy.environment, discrepancy.model)
        occurrence = self._reported.get(where, 0)
        held = rollout.version if rollout is not None and rollout.environment == where[0] else None
        message = discrepancy.message
        if held is not None:
            message += f"; the rollout of v{held} holds until this is resolved"
        detail: JSONObject = {**discrepancy.to_json(), "holds_rollout": held}
        event = RolloutEvent(
            kind="serving_discrepancy",
            model=discrepancy.model,
            version=_version_of(discrepancy, rollout),
            environment=discrepancy.environment,
            message=message,
            at=self.clock.now(),
            detail=detail,
            occurrence=occurrence,
        )
        with self.transactions.transaction():
            queue_event(self.outbox, self.catalog().models.get(discrepancy.model), event)
            self.audit.append_audit(
                actor=ACTOR,
                action=DISCREPANCY,
                model=discrepancy.model,
                environment=discrepancy.environment,
                detail=detail,
            )
        self._reported[where] = occurrence + 1
        log.warning("%s", message)

    def _clear(self, discrepancy: Discrepancy) -> None:
        self.audit.append_audit(
            actor=ACTOR,
            action=RECONCILED,
            model=discrepancy.model,
            environment=discrepancy.environment,
            detail=discrepancy.to_json(),
        )
        log.info("resolved: %s", discrepancy.message)


def _watched(catalog: Catalog, rollouts: Mapping[str, RolloutState]) -> list[tuple[Environment, list[str]]]:
    """Each environment a model on main rolls out to (or an active rollout is in), with those models."""
    watched: dict[str, list[str]] = {}
    for model in catalog.models.values():
        for stage in model.rollout.stages:
            watched.setdefault(stage.environment, []).append(model.name)
    for name, state in rollouts.items():
        if state.environment:
            watched.setdefault(state.environment, []).append(name)
    return [
        (catalog.environments[name], sorted(set(models)))
        for name, models in sorted(watched.items())
        if name in catalog.environments
    ]


def _version_of(discrepancy: Discrepancy, rollout: RolloutState | None) -> int:
    """The version number a notice is filed under: the one it is about, else the store's main one."""
    labels: Sequence[str] = (
        [discrepancy.version]
        if discrepancy.version
        else sorted(discrepancy.expected, key=lambda v: -discrepancy.expected[v])
    )
    for text in labels:
        if text.startswith("v") and text[1:].isdigit():
            return int(text[1:])
    return rollout.version if rollout is not None else 0

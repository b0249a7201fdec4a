"""A rollout's state, typed: where one model version is on its way to production, and what was asked of it.

:class:`RolloutState` is everything the rollout planner
(:mod:`controller.engine.rollout_plan`) decides from and returns: the phase,
the stage and canary step, the traffic weight, the analysis so far, a pause,
a stop to carry out, how it ended. It is frozen; the planner returns a new
one. :class:`Request` is one thing an operator (or the engine, superseding an
older rollout) asked for — pause, resume, promote, abort, rollback — which
the planner reads and consumes once it acted on it; only
:mod:`controller.engine.commands` adds requests, and only the engine writes
the state.

Both live in the rollout's row: the store's columns (``state``,
``stage_index``, ``step_index``, ``weight``, ``analysis_failures``,
``paused``, ``finished_at``) and its JSON ``detail``::

    {"schema": 1, "state": {...the rest of RolloutState...}, "requests": [...]}

:func:`load_state` and :func:`load_requests` read a row of any schema: a
``detail`` without ``"schema"`` is schema 0, the flat dict that Flywheel
wrote before the state had a type (``stable``, ``step_started_at``,
``last_verdict``, ``abort``, ``pause``, ``reason``, ...); its pending
``promote`` and ``abort`` become requests. :func:`encode` writes schema 1.
Callers are the rollout engine (:mod:`controller.engine.rollout`), the
commands and the status reader (:mod:`controller.engine.status`). Nothing
here imports a backend: a row is read through the :class:`StoredRollout`
protocol, which the store's rollout record satisfies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from pydantic import TypeAdapter

from controller.engine.verdicts import Decision, RoundVerdict

__all__ = [
    "ACTOR",
    "SCHEMA",
    "STOP_KINDS",
    "TERMINAL_STATES",
    "Baseline",
    "Ending",
    "LastRound",
    "Outcome",
    "Pause",
    "Phase",
    "Release",
    "Request",
    "RequestKind",
    "RolloutState",
    "SchemaTooNew",
    "StepProgress",
    "Stop",
    "StopKind",
    "StoredRollout",
    "encode",
    "label",
    "load_requests",
    "load_state",
    "paused_by",
    "promote_request",
    "stop_of",
    "with_request",
]

SCHEMA: Final = 1
ACTOR: Final = "flywheel"  # who the engine is in the audit log and in the requests it makes itself

Ending = Literal["succeeded", "rolled_back", "failed", "rejected", "aborted"]
Phase = Literal["deploy", "canary", "gate", "promote", "rolling_back", Ending]
StopKind = Literal["abort", "rollback", "superseded"]
RequestKind = Literal["pause", "resume", "promote", StopKind]

TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "rolled_back", "failed", "rejected", "aborted"})
STOP_KINDS: frozenset[str] = frozenset({"abort", "rollback", "superseded"})


def label(number: int) -> str:
    """The version label servers and routers use: ``v3``."""
    return f"v{number}"


# ------------------------------------------------------------------- records


@dataclass(frozen=True)
class Baseline:
    """The version production served when the rollout started, and its metrics."""

    version: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """What is rolled out, as it was when the rollout started: who made it, from where, its metrics."""

    author: str | None = None
    commit: str | None = None
    run: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline: Baseline | None = None


@dataclass(frozen=True)
class StepProgress:
    """The current canary step: when it began, whether its weights are routed, its analysis rounds."""

    started_at: datetime | None
    routed: bool = False  # the step's weights are set (and announced)
    last_round_at: datetime | None = None  # None: no round yet in this step
    rounds: int = 0


@dataclass(frozen=True)
class LastRound:
    """The latest analysis round (it may be from an earlier step or stage) and what it decided."""

    verdict: RoundVerdict
    decision: Decision


@dataclass(frozen=True)
class Pause:
    """Who paused the rollout, why and when; ``announced`` once people were told."""

    by: str
    reason: str = ""
    at: datetime | None = None
    announced: bool = False


@dataclass(frozen=True)
class Stop:
    """A stop the planner accepted and has not carried out yet (abort, rollback, superseded)."""

    kind: StopKind
    by: str
    reason: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """How the rollout ends (set when it starts rolling back) or ended, and why."""

    final: Ending
    reason: str


@dataclass(frozen=True)
class RolloutState:
    """Everything the planner knows of one rollout; the first fields are the store's columns."""

    model: str
    version: int
    stages: tuple[str, ...]  # environment names, in order
    phase: Phase = "deploy"
    stage_index: int = 0
    step_index: int = 0
    weight: int = 0  # percent of the current stage's traffic on the new version
    analysis_failures: int = 0  # failed analysis rounds in this stage
    finished_at: datetime | None = None
    release: Release = field(default_factory=Release)
    started_at: datetime | None = None  # when its start was recorded and announced
    stable: int | None = None  # the version serving the stage before this one: what a rollback restores
    canary: StepProgress | None = None  # set in the canary phase only
    last_round: LastRound | None = None
    holding_rounds: int = 0  # consecutive rounds that did not let it continue
    inconclusive_streaks: int = 0  # how often it started holding on an inconclusive round (told once each)
    pause: Pause | None = None
    pauses_announced: int = 0
    stop: Stop | None = None
    outcome: Outcome | None = None

    @property
    def active(self) -> bool:
        return self.finished_at is None and self.phase not in TERMINAL_STATES

    @property
    def environment(self) -> str | None:
        """The environment of the current stage (``None`` past the last one)."""
        return self.stages[self.stage_index] if 0 <= self.stage_index < len(self.stages) else None


@dataclass(frozen=True)
class Request:
    """One request about a rollout, kept in its row until the planner acted on it.

    ``stage`` and ``step`` say where the rollout was when a ``promote`` was
    asked for: it skips the rest of that canary step only.
    """

    id: str
    kind: RequestKind
    by: str
    at: datetime | None = None
    reason: str = ""
    stage: int | None = None
    step: int | None = None


# --------------------------------------------------------- folding requests


def paused_by(state: RolloutState, requests: Iterable[Request]) -> Pause | None:
    """The pause in force once ``requests`` are taken in order (a pause while paused changes nothing)."""
    pause = state.pause
    for request in requests:
        if request.kind == "pause" and pause is None:
            pause = Pause(by=request.by, reason=request.reason, at=request.at)
        elif request.kind == "resume":
            pause = None
    return pause


def stop_of(state: RolloutState, requests: Iterable[Request]) -> Stop | None:
    """The stop to carry out: the one accepted already, else the first stop asked for."""
    if state.stop is not None:
        return state.stop
    for request in requests:
        if request.kind in STOP_KINDS:
            kind: StopKind = request.kind  # type: ignore[assignment]  # narrowed by STOP_KINDS
            return Stop(kind=kind, by=request.by, reason=request.reason, at=request.at)
    return None


def promote_request(state: RolloutState, requests: Iterable[Request]) -> Request | None:
    """A promote asked for at the current canary step, after it began; ``None`` outside a canary step."""
    if state.phase != "canary" or state.canary is None:
        return None
    started = state.canary.started_at
    for request in requests:
        here = (request.stage, request.step) == (state.stage_index, state.step_index)
        after = started is None or request.at is None or request.at >= started
        if request.kind == "promote" and here and after:
            return request
    return None


# ------------------------------------------------------------ stored form


class StoredRollout(Protocol):
    """What :func:`load_state` reads of a stored rollout (the store's rollout record is one)."""

    @property
    def model(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def stages(self) -> tuple[str, ...]: ...
    @property
    def state(self) -> str: ...
    @property
    def stage_index(self) -> int: ...
    @property
    def step_index(self) -> int: ...
    @property
    def weight(self) -> int: ...
    @property
    def analysis_failures(self) -> int: ...
    @property
    def paused(self) -> bool: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def detail(self) -> Mapping[str, Any]: ...


class SchemaTooNew(ValueError):
    """A rollout's detail was written by a newer Flywheel than this one."""


_STATE = TypeAdapter(RolloutState)
_REQUESTS = TypeAdapter(tuple[Request, ...])
_COLUMNS = frozenset(
    {
        "model",
        "version",
        "stages",
        "phase",
        "stage_index",
        "step_index",
        "weight",
        "analysis_failures",
        "finished_at",
    }
)


def load_state(record: StoredRollout) -> RolloutState:
    """The typed state of a stored rollout, whichever schema its ``detail`` has."""
    schema = _schema(record.detail)
    saved = _v0_state(record) if schema == 0 else dict(record.detail.get("state") or {})
    columns = {
        "model": record.model,
        "version": record.version,
        "stages": tuple(record.stages),
        "phase": record.state,
        "stage_index": record.stage_index,
        "step_index": record.step_index,
        "weight": record.weight,
        "analysis_failures": record.analysis_failures,
        "finished_at": record.finished_at,
    }
    return _STATE.validate_python({**saved, **columns})


def load_requests(record: StoredRollout) -> tuple[Request, ...]:
    """The requests a stored rollout holds, oldest first."""
    detail = record.detail
    listed = _REQUESTS.validate_python(detail.get("requests") or ())
    if _schema(detail) == 0:
        return _v0_requests(record) + listed
    return listed


def encode(state: RolloutState, requests: Sequence[Request]) -> dict[str, Any]:
    """The ``detail`` to store for ``state`` and the requests still pending (the columns hold the rest)."""
    return {
        "schema": SCHEMA,
        "state": _STATE.dump_python(state, mode="json", exclude=set(_COLUMNS)),
        "requests": list(_REQUESTS.dump_python(tuple(requests), mode="json")),
    }


def with_request(detail: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """``detail`` with ``request`` added to its pending requests; the rest is left as it was."""
    listed = list(detail.get("requests") or ())
    (added,) = _REQUESTS.dump_python((request,), mode="json")
    return {**detail, "requests": [*listed, added]}


def _schema(detail: Mapping[str, Any]) -> int:
    schema = detail.get("schema", 0)
    if not isinstance(schema, int) or schema < 0:
        raise ValueError(f"a rollout's detail has schema {schema!r}, which is no schema")
    if schema > SCHEMA:
        raise SchemaTooNew(
            f"a rollout's detail has schema {schema}, newer than this Flywheel reads ({SCHEMA}); upgrade it"
        )
    return schema


# ------------------------------------------------------ schema 0 (untyped)


def _v0_state(record: StoredRollout) -> dict[str, Any]:
    """Schema 0's flat keys in schema 1's shape (validated by the caller)."""
    old = record.detail
    state: dict[str, Any] = {
        "release": {
            "author": _text(old.get("author")),
            "commit": _text(old.get("commit")),
            "run": old.get("run") if isinstance(old.get("run"), int) else None,
            "metrics": _mapping(old.get("metrics")),
            "baseline": None,
        },
        "started_at": _time(old.get("started")),
        "stable": old.get("stable") if isinstance(old.get("stable"), int) else None,
        "holding_rounds": _count(old.get("holding")),
        "inconclusive_streaks": _count(old.get("inconclusive_streaks")),
        "pauses_announced": _count(old.get("pauses_seen")),
    }
    baseline = old.get("baseline")
    if isinstance(baseline, Mapping) and isinstance(baseline.get("version"), int):
        state["release"]["baseline"] = {
            "version": baseline["version"],
            "metrics": _mapping(baseline.get("metrics")),
        }
    if record.state == "canary":
        applied = old.get("applied")
        state["canary"] = {
            "started_at": _time(old.get("step_started_at")),
            "routed": applied == f"{record.stage_index}:{record.step_index}",
            "last_round_at": _time(old.get("last_round_at")),
            "rounds": _count(old.get("rounds_in_step")),
        }
    verdict, decision = old.get("last_verdict"), old.get("last_decision")
    if isinstance(verdict, Mapping) and isinstance(decision, Mapping) and decision.get("action"):
        state["last_round"] = {
            "verdict": dict(verdict),
            "decision": {"action": decision["action"], "reason": str(decision.get("reason", ""))},
        }
    pause = old.get("pause")
    if record.paused:
        request = pause if isinstance(pause, Mapping) else {}
        marker = request.get("at")
        state["pause"] = {
            "by": str(request.get("by") or "someone"),
            "reason": str(request.get("reason") or ""),
            "at": _time(marker),
            "announced": old.get("pause_announced") == marker,
        }
    ending = old.get("final") if record.state == "rolling_back" else record.state
    if ending in TERMINAL_STATES:
        state["outcome"] = {"final": ending, "reason": str(old.get("reason") or "")}
    return state


def _v0_requests(record: StoredRollout) -> tuple[Request, ...]:
    """Schema 0 kept the latest promote and an abort in the detail; the ones not acted on are pending."""
    old = record.detail
    found: list[Request] = []
    promote = old.get("promote")
    if isinstance(promote, Mapping) and record.state == "canary":
        found.append(
            Request(
                id="v0-promote",
                kind="promote",
                by=str(promote.get("by") or "someone"),
                at=_time(promote.get("at")),
                reason=str(promote.get("reason") or ""),
                stage=promote.get("stage") if isinstance(promote.get("stage"), int) else None,
                step=promote.get("step") if isinstance(promote.get("step"), int) else None,
            )
        )
    abort = old.get("abort")
    carried_out = record.state == "rolling_back" or record.finished_at is not None
    if isinstance(abort, Mapping) and not carried_out:
        kind = abort.get("kind")
        found.append(
            Request(
                id="v0-abort",
                kind=kind if kind in STOP_KINDS else "abort",
                by=str(abort.get("by") or ACTOR),
                at=_time(abort.get("at")),
                reason=str(abort.get("reason") or ""),
            )
        )
    return tuple(found)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return str(value) if value else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}

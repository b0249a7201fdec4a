"""What each model is doing now, for people: versions, what serves where, its rollout, its last release run.

``flywheel models``, ``flywheel status`` and ``flywheel review ls`` render
these records as text or JSON; the web dashboard is meant to reuse them.
Everything here is read from the store (and, when the caller has it, from
main's catalog: canary steps, analysis interval, approval rules); nothing is
written, and "now" is passed in, so the same store gives the same status.

A rollout's progress is read as its typed state
(:func:`~controller.engine.rollout_state.load_state`: the last analysis
round, the canary step's timing, the stable version, a pause, why it ended)
together with the requests people made that the engine has not acted on yet
(:func:`~controller.engine.rollout_state.load_requests`): a pause asked for
reads *paused* at once, an abort asked for reads *stopping*.

A rollout's *condition* sums it up:

``in_progress``  deploying, in a canary step whose analysis passes, or promoting;
``holding``      its last analysis round was inconclusive or failed below the limit,
                 or it waits at an approval gate (``reason`` says which, and for whom);
``paused``       an operator paused it (``pause`` says who and why);
``stopping``     an abort or rollback was asked for and not carried out yet;
``rolling_back`` traffic goes back to the stable version;
``succeeded``, ``rolled_back``, ``failed``, ``rejected``, ``aborted``: it ended (``reason`` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, Unpack

from controller.backends.store import Approval, ModelVersion, Review, RolloutRecord, Run, RunQuery
from controller.engine.approvals import approval_gate
from controller.engine.gates import GateResult
from controller.engine.judging import RELEASE_TRIGGER
from controller.engine.rollout_state import (
    Request,
    RolloutState,
    load_requests,
    load_state,
    paused_by,
    promote_request,
    stop_of,
)
from controller.engine.verdicts import CheckResult
from controller.specs.types import Catalog, Model, Stage

__all__ = [
    "AnalysisRound",
    "ApprovalWait",
    "Canary",
    "EnvironmentServing",
    "ModelStatus",
    "ModelStatusRecords",
    "Pause",
    "ProposalStatus",
    "ReleaseRun",
    "ReviewStatusRecords",
    "RolloutStatus",
    "Share",
    "Wait",
    "model_status",
    "model_statuses",
    "proposal_statuses",
    "rollout_status",
]

Condition = Literal[
    "in_progress",
    "holding",
    "paused",
    "stopping",
    "rolling_back",
    "succeeded",
    "rolled_back",
    "failed",
    "rejected",
    "aborted",
]
WaitKind = Literal["deploy", "time", "analysis", "approval", "resume", "rollback", "controller"]
ReleaseOutcome = Literal["training", "released", "passed", "gates_failed", "failed", "error", "cancelled"]

_ENDED: frozenset[str] = frozenset({"succeeded", "rolled_back", "failed", "rejected", "aborted"})
_RECENT_RUNS = 1000  # how far back the runs are read for models that have no version yet


# ------------------------------------------------------------------- records


@dataclass(frozen=True)
class Share:
    """``version`` takes ``weight`` percent of an environment's traffic."""

    version: int
    weight: int


@dataclass(frozen=True)
class EnvironmentServing:
    environment: str
    shares: tuple[Share, ...]  # empty: nothing serves the model there


@dataclass(frozen=True)
class Pause:
    by: str
    at: datetime | None
    reason: str


@dataclass(frozen=True)
class Canary:
    """Where a rollout is in its stage's canary steps; ``step`` counts from 1."""

    step: int
    steps: int | None  # None without main's catalog
    weight: int
    stable_version: int | None
    started_at: datetime | None
    ends_at: datetime | None  # the step's duration is over (it also needs a passing round)


@dataclass(frozen=True)
class AnalysisRound:
    """The latest analysis round: each check's measured value against its threshold, and the decision."""

    at: datetime | None  # None: measured in an earlier step, none yet in this one
    outcome: str  # passed | failed | inconclusive
    summary: str
    decision: str | None  # continue | hold | rollback
    decision_reason: str | None
    checks: tuple[CheckResult, ...]
    failed_rounds: int  # in this stage so far
    failure_limit: int | None  # None without main's catalog
    next_at: datetime | None


@dataclass(frozen=True)
class ApprovalWait:
    """An approval gate: who may open it (from main's policy), who has, what is missing."""

    environment: str
    rule: str | None  # None: main's policy was not read
    groups: tuple[str, ...]
    required: int | None
    missing: int | None
    approvers: tuple[str, ...]
    rejecters: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Wait:
    """One thing a rollout waits for before it moves on; ``until``: the earliest it can be over, if known.

    For ``time``, when the canary step's duration is up; for ``analysis``, when the next round is due.
    """

    kind: WaitKind
    message: str
    until: datetime | None = None


@dataclass(frozen=True)
class RolloutStatus:
    id: int
    version: int
    state: str  # the engine's own: deploy, canary, gate, promote, rolling_back or how it ended
    condition: Condition
    reason: str  # why it holds, is stopping or ended; empty when in progress
    stages: tuple[str, ...]
    stage: str | None
    stage_number: int  # counts from 1
    weight: int | None  # the new version's share in the current stage; None once ended
    canary: Canary | None
    paused: Pause | None
    approval: ApprovalWait | None
    last_round: AnalysisRound | None
    waiting_for: tuple[Wait, ...]
    author: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        return self.finished_at is None


@dataclass(frozen=True)
class ReleaseRun:
    """The latest run of the release branch (main) and what came of it."""

    run: int
    ref: str
    commit: str
    status: str
    outcome: ReleaseOutcome
    failed_gates: tuple[GateResult, ...]
    error: str | None
    version: int | None  # the version it made
    finished_at: datetime | None

    @property
    def needs_attention(self) -> bool:
        """Main's head did not become a version: its gates failed, a step failed, or it could not run."""
        return self.outcome in ("gates_failed", "failed", "error")


@dataclass(frozen=True)
class ModelStatus:
    model: str
    latest_version: int | None
    serving: tuple[EnvironmentServing, ...]
    rollout: RolloutStatus | None  # the newest rollout, in progress or ended
    release_run: ReleaseRun | None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(asdict(self))
        if self.rollout is not None:
            data["rollout"]["active"] = self.rollout.active
        if self.release_run is not None:
            data["release_run"]["needs_attention"] = self.release_run.needs_attention
        return data


@dataclass(frozen=True)
class ProposalStatus:
    """A proposal's review of one model: its outcome and the production version it was compared with."""

    branch: str
    model: str
    commit: str
    state: str  # pending | success | failure | error
    description: str
    updated_at: datetime
    run: int | None
    compared_with: int | None  # None: nothing served production when it was judged, or not judged yet

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(asdict(self))
        return data


# ----------------------------------------------------------------- readers


class ModelStatusRecords(Protocol):
    """What :func:`model_status` reads: versions, release runs, rollouts, traffic and approvals."""

    def list_models(self) -> list[str]: ...

    def latest_version(self, model: str) -> ModelVersion | None: ...

    def list_versions(self, model: str) -> list[ModelVersion]: ...

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]: ...

    def rollouts_for(self, model: str) -> list[RolloutRecord]: ...

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]: ...

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]: ...


class ReviewStatusRecords(Protocol):
    """What :func:`proposal_statuses` reads: the reviews, and the runs they report."""

    def reviews(self, *, proposal: str | None = None, model: str | None = None) -> list[Review]: ...

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]: ...


def model_statuses(
    store: ModelStatusRecords, *, now: datetime, catalog: Catalog | None = None
) -> list[ModelStatus]:
    """Every model with a version or a release run, by name."""
    names = set(store.list_models())
    names |= {r.model for r in store.list_runs(limit=_RECENT_RUNS) if r.trigger == RELEASE_TRIGGER}
    return [model_status(store, name, now=now, catalog=catalog) for name in sorted(names)]


def model_status(
    store: ModelStatusRecords, model: str, *, now: datetime, catalog: Catalog | None = None
) -> ModelStatus:
    """What ``model`` is doing at ``now``; ``catalog`` is main's, when the caller could read it."""
    spec = catalog.models.get(model) if catalog is not None else None
    latest = store.latest_version(model)
    rollouts = store.rollouts_for(model)
    environments: list[str] = [s.environment for s in spec.rollout.stages] if spec is not None else []
    for record in rollouts:
        environments += [e for e in record.stages if e not in environments]
    serving = tuple(
        EnvironmentServing(
            env, tuple(Share(v, w) for v, w in store.served_at(environment=env, model=model, at=now))
        )
        for env in environments
    )
    rollout = _rollout_status(store, rollouts[0], now=now, spec=spec, catalog=catalog) if rollouts else None
    return ModelStatus(
        model=model,
        latest_version=latest.number if latest is not None else None,
        serving=serving,
        rollout=rollout,
        release_run=_release_run(store, model),
    )


def rollout_status(
    store: ModelStatusRecords, record: RolloutRecord, *, now: datetime, catalog: Catalog | None = None
) -> RolloutStatus:
    """Any one rollout (not only a model's newest) as :func:`model_status` reads it."""
    spec = catalog.models.get(record.model) if catalog is not None else None
    return _rollout_status(store, record, now=now, spec=spec, catalog=catalog)


def proposal_statuses(
    store: ReviewStatusRecords, *, branch: str | None = None, catalog: Catalog | None = None
) -> list[ProposalStatus]:
    """Every proposal's review (of ``branch`` only, if given), newest first."""
    found = []
    for review in store.reviews(proposal=branch):
        run = _review_run(store, review)
        found.append(
            ProposalStatus(
                branch=review.proposal,
                model=review.model,
                commit=review.commit,
                state=review.state,
                description=review.description,
                updated_at=review.updated_at,
                run=run.id if run is not None else None,
                compared_with=_compared_with(run),
            )
        )
    return sorted(found, key=lambda p: (p.updated_at, p.branch, p.model), reverse=True)


# ---------------------------------------------------------------- rollouts


def _rollout_status(
    store: ModelStatusRecords,
    record: RolloutRecord,
    *,
    now: datetime,
    spec: Model | None,
    catalog: Catalog | None,
) -> RolloutStatus:
    state, requests = load_state(record), load_requests(record)
    stage = _stage(spec, record.environment)
    canary = _canary(state, stage) if record.state == "canary" and record.active else None
    last_round = _last_round(state, spec)
    approval = (
        _approval(store, record, stage=stage, catalog=catalog, now=now)
        if record.state == "gate" and record.active
        else None
    )
    paused = paused_by(state, requests) if record.active else None
    pause = Pause(by=paused.by, at=paused.at, reason=paused.reason) if paused is not None else None
    condition, reason, waits = _condition(
        record, state, requests, canary, last_round, approval, pause, now=now
    )
    author = state.release.author
    return RolloutStatus(
        id=record.id,
        version=record.version,
        state=record.state,
        condition=condition,
        reason=reason,
        stages=record.stages,
        stage=record.environment,
        stage_number=record.stage_index + 1,
        weight=record.weight if record.active else None,
        canary=canary,
        paused=pause,
        approval=approval,
        last_round=last_round,
        waiting_for=waits,
        author=author,
        started_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
    )


def _condition(
    record: RolloutRecord,
    state: RolloutState,
    requests: Sequence[Request],
    canary: Canary | None,
    last_round: AnalysisRound | None,
    approval: ApprovalWait | None,
    pause: Pause | None,
    *,
    now: datetime,
) -> tuple[Condition, str, tuple[Wait, ...]]:
    why_ended = state.outcome.reason if state.outcome is not None else ""
    if not record.active:
        ended: Condition = record.state if record.state in _ENDED else "aborted"  # type: ignore[assignment]
        return ended, why_ended, ()
    if record.state == "rolling_back":
        return "rolling_back", why_ended, (Wait("rollback", _stable_words(state.stable)),)
    stop = stop_of(state, requests)
    if stop is not None:
        why = f"{stop.kind} asked for by {stop.by or 'someone'}"
        why += f": {stop.reason}" if stop.reason else ""
        return "stopping", why, (Wait("controller", "the controller to carry it out"),)
    if pause is not None:
        why = f"paused by {pause.by}" + (f": {pause.reason}" if pause.reason else "")
        return "paused", why, (Wait("resume", f"an operator to resume it (paused by {pause.by})"),)
    env = record.environment or "-"
    if record.state == "deploy":
        wait = Wait("deploy", f"v{record.version} to start in {env} and pass its smoke test")
        return "in_progress", "", (wait,)
    if record.state == "gate":
        if approval is None or approval.missing == 0 or approval.rejecters:
            return "in_progress", "", ()  # opens (or closes) at the next tick
        return "holding", approval.message, (Wait("approval", approval.message),)
    if record.state == "canary":
        waits: list[Wait] = []
        promoted = promote_request(state, requests) is not None
        if canary is not None and not promoted and canary.ends_at is not None and now < canary.ends_at:
            waits.append(Wait("time", f"canary step {canary.step} to run its course", canary.ends_at))
        holding = (
            last_round is not None
            and last_round.at is not None
            and last_round.decision in ("hold", "rollback")
        )
        if last_round is None or last_round.at is None or holding:
            what = "an analysis round that passes" if holding else "the first analysis round of this step"
            waits.append(Wait("analysis", what, last_round.next_at if last_round is not None else None))
        if holding and last_round is not None:
            return "holding", last_round.decision_reason or last_round.summary, tuple(waits)
        return "in_progress", "", tuple(waits)
    return "in_progress", "", ()


def _canary(state: RolloutState, stage: Stage | None) -> Canary:
    started = state.canary.started_at if state.canary is not None else None
    steps = stage.canary if stage is not None and stage.canary else None
    ends = None
    if steps is not None and started is not None and state.step_index < len(steps):
        ends = started + timedelta(seconds=steps[state.step_index].duration_seconds)
    return Canary(
        step=state.step_index + 1,
        steps=len(steps) if steps is not None else None,
        weight=state.weight,
        stable_version=state.stable,
        started_at=started,
        ends_at=ends,
    )


def _last_round(state: RolloutState, spec: Model | None) -> AnalysisRound | None:
    last = state.last_round
    if last is None:
        return None
    at = state.canary.last_round_at if state.phase == "canary" and state.canary is not None else None
    interval = spec.rollout.analysis.interval_seconds if spec is not None else None
    next_at = at + timedelta(seconds=interval) if at is not None and interval is not None else None
    return AnalysisRound(
        at=at,
        outcome=last.verdict.outcome,
        summary=last.verdict.summary,
        decision=last.decision.action or None,
        decision_reason=last.decision.reason or None,
        checks=last.verdict.results,
        failed_rounds=state.analysis_failures,
        failure_limit=spec.rollout.analysis.failure_limit if spec is not None else None,
        next_at=next_at,
    )


def _approval(
    store: ModelStatusRecords,
    record: RolloutRecord,
    *,
    stage: Stage | None,
    catalog: Catalog | None,
    now: datetime,
) -> ApprovalWait | None:
    """The gate of the current stage; ``None`` when main's spec names no approval rule for it."""
    env = record.environment or "-"
    approvals = store.approvals_for(model=record.model, version=record.version, environment=env)
    if catalog is None or stage is None:
        approvers, rejecters = _latest_decisions(approvals, now)
        message = "waiting for approval (main's policy was not read: who may approve is not known here)"
        return ApprovalWait(env, None, (), None, None, approvers, rejecters, message)
    if not stage.approval:
        return None  # a gate without a rule opens at the next tick
    at_gate = approval_gate(
        catalog, stage.approval, model=record.model, version=record.version, environment=env
    )
    if at_gate is None:
        approvers, rejecters = _latest_decisions(approvals, now)
        message = f"approval rule {stage.approval!r} is not in main's policies; waiting"
        return ApprovalWait(env, stage.approval, (), None, None, approvers, rejecters, message)
    rule, gate = at_gate.rule, at_gate.state(approvals, now)
    return ApprovalWait(
        environment=env,
        rule=rule.name,
        groups=tuple(rule.groups),
        required=max(rule.required, 1),
        missing=gate.missing,
        approvers=gate.approvers,
        rejecters=gate.rejecters,
        message=gate.message,
    )


def _latest_decisions(
    approvals: Sequence[Approval], now: datetime
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Approvers and rejecters by each user's latest unexpired decision (no policy to judge them by)."""
    latest: dict[str, Approval] = {}
    for approval in sorted(approvals, key=lambda a: (a.created_at, a.id)):
        latest[approval.user] = approval
    live = [a for a in latest.values() if a.valid_at(now)]
    return (
        tuple(sorted(a.user for a in live if a.decision == "approve")),
        tuple(sorted(a.user for a in live if a.decision == "reject")),
    )


def _stable_words(stable: int | None) -> str:
    if stable is not None:
        return f"v{stable} to take all traffic again"
    return "the new version to be taken out of traffic"


def _stage(spec: Model | None, environment: str | None) -> Stage | None:
    if spec is None:
        return None
    return next((s for s in spec.rollout.stages if s.environment == environment), None)


# ---------------------------------------------------------- runs and reviews


def _release_run(store: ModelStatusRecords, model: str) -> ReleaseRun | None:
    run = next((r for r in store.list_runs(model=model, limit=50) if r.trigger == RELEASE_TRIGGER), None)
    if run is None:
        return None
    gates = tuple(GateResult.from_json(g) for g in run.gates)
    failed = tuple(g for g in gates if g.outcome == "failed")
    version = next((v.number for v in store.list_versions(model) if v.run_id == run.id), None)
    outcome: ReleaseOutcome
    if run.status in ("queued", "running"):
        outcome = "training"
    elif run.status == "succeeded":
        outcome = "gates_failed" if failed else "released" if version is not None else "passed"
    else:
        outcome = run.status  # type: ignore[assignment]  # failed | error | cancelled
    return ReleaseRun(
        run=run.id,
        ref=run.ref,
        commit=run.commit,
        status=run.status,
        outcome=outcome,
        failed_gates=failed,
        error=run.error,
        version=version,
        finished_at=run.finished_at,
    )


def _review_run(store: ReviewStatusRecords, review: Review) -> Run | None:
    runs = store.list_runs(model=review.model, ref=review.proposal, limit=20)
    return next((r for r in runs if r.commit == review.commit), None)


def _compared_with(run: Run | None) -> int | None:
    """The production version ``run``'s gates were judged against (kept with the run)."""
    return run.baseline_version if run is not None else None


# ------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """``asdict`` output made JSON-ready: times in ISO 8601, tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value

"""The rollout planner: a pure function from a rollout's state and what was observed to what to do next.

The rollout engine (:mod:`controller.engine.rollout`) calls
:func:`plan_rollout` once per tick for each active rollout, with its
:class:`~controller.engine.rollout_state.RolloutState`, the
:class:`Observations` it made (the operators' pending requests, the version
that serves the stage now, what runs there, the analysis round when one is
due — :func:`needs` says which — the approvals recorded for the gate, the
time) and main's catalog (the model's rollout, its environments, the approval
rules). It returns a :class:`RolloutPlan`: the actions to perform in order and
the state they lead to. Nothing here touches the store, a server or a metrics
source, and nothing is imported from the backends, so every rule is tested
without them.

A rollout is at one stage (an environment of the model's ``rollout.stages``)
and in one phase:

``deploy``
    run the version in the stage's environment and smoke-test it with the
    spec's sample inputs; a version takes traffic only once both passed (a
    failure of either ends the rollout ``failed``). With a version already
    serving there and canary steps in the spec, go to ``canary`` step 0;
    otherwise (first deployment, or no canary steps) straight to ``gate``.
``canary``
    the version takes the step's weight; every analysis interval a round is
    measured and judged (:mod:`controller.engine.verdicts`). The step is over
    when its duration has passed *and* the latest round passed; an
    inconclusive round holds (never promotes on missing data), and reaching
    the failure limit rolls back. A ``promote`` request skips the rest of the
    current step's wait (never an approval gate).
``gate``
    when the stage names an approval rule, wait until the rule is satisfied
    under main's policy, by approvals that have not expired; a rejection
    rolls back.
``promote``
    100% to the new version, retire the versions it replaced, then the next
    stage's ``deploy`` — or ``succeeded``.
``rolling_back``
    the stable version takes all traffic again, the new one is retired; then
    how it ended: ``rolled_back`` (analysis, or a rollback request),
    ``failed`` (deploy, smoke test or routing), ``rejected``, ``aborted``.

Requests are taken in order before the phase acts: ``pause`` holds the
rollout wherever it is (it is announced once; rolling back goes on),
``resume`` lifts it, ``abort``/``rollback``/``superseded`` roll it back.

Observed state wins: while what serves in the stage's environment differs
from what the store says (``Observations.discrepancies``, from
:mod:`controller.engine.observed`, which audits and announces each one),
the rollout holds where it is, as Flagger halts advancement while a
workload is not ready: it deploys, routes, judges and promotes nothing on
top of it, and goes on by itself once the observation agrees again (a
canary step only on an analysis round judged after the hold: the round
before it is forgotten). An
unreadable observation (a router down) holds the same way, never counts as
"nothing serves", and never rolls back. Requests still act (an abort or
rollback is how people end it), and rolling back goes on.

Each state change is a :class:`Save` placed before the side effects of the
new state (as a transition must be recorded before it is acted on); side
effects are idempotent, and notifications carry keys that make a repeated one
count once. A side effect whose failure ends the rollout carries that reason
(``failure``); the engine then plans again with the :class:`Failure`
observed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from controller.engine.approvals import approval_gate
from controller.engine.rollout_actions import (
    Action,
    Audit,
    Deploy,
    Needs,
    NoticeKind,
    Notify,
    Observations,
    Retire,
    RetireAllBut,
    RolloutPlan,
    Route,
    Save,
    SmokeTest,
)
from controller.engine.rollout_state import (
    ACTOR,
    Ending,
    LastRound,
    Outcome,
    Phase,
    Request,
    RolloutState,
    StepProgress,
    Stop,
    label,
    paused_by,
    promote_request,
    stop_of,
)
from controller.engine.verdicts import AnalysisRun, Decision, RoundVerdict
from controller.specs.types import Analysis, Catalog, Model, Stage

__all__ = ["needs", "plan_rollout", "plan_start", "round_due"]

Record = tuple[str, Mapping[str, Any]]  # an audit entry: its action and detail

# ------------------------------------------------------------------ planning


def needs(state: RolloutState, catalog: Catalog, *, now: datetime) -> Needs:
    """What to observe before planning ``state``: only what its phase decides on."""
    model = catalog.models.get(state.model)
    if model is None or not state.active:
        return Needs()
    if state.phase == "deploy":
        return Needs(stable=True)
    if state.phase == "canary":
        return Needs(verdict=round_due(state, model.rollout.analysis, now=now))
    if state.phase == "gate":
        return Needs(approvals=True)
    if state.phase == "rolling_back":
        return Needs(deployed=True)
    return Needs()


def round_due(state: RolloutState, analysis: Analysis, *, now: datetime) -> bool:
    """Whether an analysis round is due in the current canary step."""
    if state.phase != "canary":
        return False
    last = state.canary.last_round_at if state.canary is not None else None
    return last is None or now - last >= timedelta(seconds=analysis.interval_seconds)


def plan_start(state: RolloutState, *, created: bool, now: datetime) -> RolloutPlan:
    """Record and announce the start of a rollout just ``created``; nothing for one that existed."""
    script = _Script(state, now)
    if created and state.phase == "deploy" and state.started_at is None:
        script.save(replace(state, started_at=now))
        stages = list(state.stages)
        script.audit("rollout.started", {"stages": stages, "author": state.release.author})
        script.notify(
            "rollout_started",
            f"Rollout of v{state.version} started: {' → '.join(stages)}.",
            extra={"stages": stages},
        )
    return script.plan()


def plan_rollout(
    state: RolloutState, observations: Observations, *, catalog: Catalog, now: datetime
) -> RolloutPlan:
    """The next actions for an active rollout, and the state they lead to; ``catalog`` is main's."""
    script = _Script(state, now, observations.requests)
    if not state.active:
        return script.plan()
    model = catalog.models.get(state.model)
    if model is None:  # nothing can be done without its spec: stop it once it is back
        if state.stop is None:
            script.save(replace(state, stop=Stop("abort", ACTOR, f"{state.model} is no longer on main", now)))
        return script.plan()
    env = state.environment or ""
    if env not in catalog.environments:
        script.finish("aborted", f"environment {state.environment!r} is not defined on main")
        return script.plan()
    stage = next((s for s in model.rollout.stages if s.environment == env), None)
    if stage is None:  # the stage left the spec mid-rollout: undo it here and stop
        if state.phase != "rolling_back":
            script.roll_back("aborted", f"{env} is no longer a stage of {state.model}'s rollout on main")
            return script.plan()
        stage = Stage(environment=env)
    if observations.failure is not None:
        _failed(script, observations)
        return script.plan()
    _take_requests(script, observations.requests)
    stop = script.state.stop
    if stop is not None and script.state.phase != "rolling_back":
        final: Ending = "rolled_back" if stop.kind == "rollback" else "aborted"
        script.roll_back(final, f"{stop.kind} by {stop.by}" + (f": {stop.reason}" if stop.reason else ""))
        return script.plan()
    if script.state.pause is not None and script.state.phase != "rolling_back":
        _announce_pause(script)
        return script.plan()
    if observations.discrepancies and script.state.phase != "rolling_back":
        # Observed state differs: hold (reported by controller.engine.observed). A canary forgets its
        # last round, so that once things agree again it goes on only on a round judged after the hold.
        if script.state.phase == "canary" and script.state.last_round is not None:
            script.save(replace(script.state, last_round=None))
        return script.plan()
    phases = {
        "deploy": _deploy,
        "canary": _canary,
        "gate": _gate,
        "promote": _promote,
        "rolling_back": _rolling_back,
    }
    phases[script.state.phase](script, _Context(model, stage, observations, catalog))
    return script.plan()


# ------------------------------------------------------------------- phases


@dataclass(frozen=True)
class _Context:
    model: Model
    stage: Stage
    seen: Observations
    catalog: Catalog


def _take_requests(script: _Script, requests: Sequence[Request]) -> None:
    """Pause, resume and stops take effect now; a promote waits in a canary step, and is dropped elsewhere."""
    state = script.state
    pause = paused_by(state, requests)
    stop = stop_of(state, requests) if state.phase != "rolling_back" else state.stop
    for request in requests:
        if request.kind != "promote" or state.phase != "canary":
            script.consume(request)
    script.update(replace(state, pause=pause, stop=stop))


def _announce_pause(script: _Script) -> None:
    state = script.state
    pause = state.pause
    if pause is None or pause.announced:
        return
    occurrence = state.pauses_announced
    script.save(replace(state, pause=replace(pause, announced=True), pauses_announced=occurrence + 1))
    script.notify("paused", f"Paused by {pause.by}.", occurrence=occurrence)


def _failed(script: _Script, seen: Observations) -> None:
    assert seen.failure is not None
    failure = seen.failure
    stable = seen.stable if seen.stable is not None else script.state.stable
    script.roll_back("failed", f"{failure.action.failure}: {failure.error}", stable=stable)


def _deploy(script: _Script, ctx: _Context) -> None:
    state = script.state
    env, stable = state.environment or "", ctx.seen.stable
    inputs = tuple(tuple(row) for row in ctx.model.serving.sample_inputs)
    why_not = f"deploy to {env} failed"
    script.act(Deploy(env, state.version, failure=why_not))
    script.act(SmokeTest(env, state.version, inputs, failure=why_not))
    # Audited with the transition it leads to, in its transaction: a restart never audits it twice.
    deployed = ("rollout.deployed", {"stable": stable, "smoke_inputs": len(inputs)})
    if ctx.stage.canary and stable is not None:
        _enter_step(script, ctx, step=0, stable=stable, failures=0, first=(deployed,))
    else:
        why = "first deployment here" if stable is None else "no canary steps"
        script.transition("gate", {"canary": f"skipped: {why}"}, first=(deployed,), stable=stable)


def _enter_step(
    script: _Script,
    ctx: _Context,
    *,
    step: int,
    stable: int | None,
    failures: int,
    first: tuple[Record, ...] = (),
) -> None:
    weight = ctx.stage.canary[step].weight
    script.drop_promotes()  # a promote counts for the step it was asked in only
    script.transition(
        "canary",
        {"step": step, "weight": weight},
        first=first,
        step_index=step,
        weight=weight,
        analysis_failures=failures,
        stable=stable,
        canary=StepProgress(started_at=script.now),
    )
    _route_step(script, ctx)


def _route_step(script: _Script, ctx: _Context) -> None:
    """Route the current step's weights unless done already, then announce the step."""
    state = script.state
    assert state.canary is not None
    if state.canary.routed:
        return
    weights = {state.version: state.weight}
    if state.stable is not None and state.weight < 100:
        weights[state.stable] = 100 - state.weight
    script.act(Route(state.environment or "", weights, failure="could not route traffic"))
    script.save(replace(state, canary=replace(state.canary, routed=True)))
    script.notify(
        "step_reached",
        f"Canary step {state.step_index + 1} of {len(ctx.stage.canary)}: {state.weight}% of traffic.",
        step=state.step_index,
        extra={"weight": state.weight, "stable_version": state.stable},
    )


def _canary(script: _Script, ctx: _Context) -> None:
    if script.state.canary is None:  # a canary phase without its step's record: route the step again
        script.update(replace(script.state, canary=StepProgress(started_at=None)))
    _route_step(script, ctx)
    analysis = ctx.model.rollout.analysis
    verdict = ctx.seen.verdict
    due = verdict is not None and round_due(script.state, analysis, now=script.now)
    if due and verdict is not None and not _judge_round(script, verdict, analysis):
        return
    state = script.state
    assert state.canary is not None
    step = state.step_index
    promote = promote_request(state, ctx.seen.requests)
    started = state.canary.started_at or script.now
    elapsed = script.now - started >= timedelta(seconds=ctx.stage.canary[step].duration_seconds)
    passed = state.last_round is not None and state.last_round.decision.action == "continue"
    if promote is None and not (elapsed and passed):
        return
    if promote is not None:
        script.consume(promote)
    if step + 1 < len(ctx.stage.canary):
        _enter_step(script, ctx, step=step + 1, stable=state.stable, failures=state.analysis_failures)
    else:
        script.transition("gate", {"promoted_by": promote.by if promote is not None else None}, canary=None)


def _judge_round(script: _Script, verdict: RoundVerdict, analysis: Analysis) -> bool:
    """Record one analysis round and tell people what it means; False when it rolls the rollout back."""
    state = script.state
    assert state.canary is not None
    run = AnalysisRun(failures=state.analysis_failures, holding_rounds=state.holding_rounds)
    run = run.after(verdict, analysis)
    decision = run.decision or Decision("hold", verdict.summary)
    progress = replace(state.canary, last_round_at=script.now, rounds=state.canary.rounds + 1)
    script.save(
        replace(
            state,
            analysis_failures=run.failures,
            holding_rounds=run.holding_rounds,
            last_round=LastRound(verdict, decision),
            canary=progress,
        )
    )
    script.audit("analysis.round", {"verdict": verdict.to_json(), "decision": decision.action})
    step, analysed = state.step_index, {"analysis": verdict.to_json()}
    if decision.action == "rollback":
        script.notify("analysis_failed", decision.reason, step=step, occurrence=run.failures, extra=analysed)
        script.roll_back("rolled_back", decision.reason)
        return False
    if verdict.outcome == "failed":
        script.notify("analysis_failed", decision.reason, step=step, occurrence=run.failures, extra=analysed)
    elif verdict.outcome == "inconclusive" and run.holding_rounds == 1:
        streak = script.state.inconclusive_streaks
        script.save(replace(script.state, inconclusive_streaks=streak + 1))
        script.notify("analysis_inconclusive", decision.reason, step=step, occurrence=streak, extra=analysed)
    return True


def _gate(script: _Script, ctx: _Context) -> None:
    state = script.state
    rule_name = ctx.stage.approval
    if not rule_name:
        script.transition("promote")
        return
    at_gate = approval_gate(
        ctx.catalog, rule_name, model=state.model, version=state.version, environment=state.environment or ""
    )
    if at_gate is None:
        reason = f"approval rule {rule_name!r} is not in main's policies; waiting"
        script.notify("awaiting_approval", reason, extra={"rule": rule_name})
        return
    rule, gate = at_gate.rule, at_gate.state(ctx.seen.approvals, script.now)
    if gate.rejected:
        script.notify("rejected", gate.message, extra={"rejecters": list(gate.rejecters)})
        script.roll_back("rejected", gate.message)
    elif gate.satisfied:
        script.notify("approved", gate.message, extra={"approvers": list(gate.approvers)})
        script.transition("promote", {"approvers": list(gate.approvers), "rule": rule.name})
    else:
        groups = list(rule.groups)
        script.notify(
            "awaiting_approval",
            f"Waiting for approval ({rule.name}): {gate.message}.",
            extra={
                "rule": rule.name,
                "groups": groups,
                "may_approve": "a member of " + " or ".join(groups),
                "missing": gate.missing,
                "approvers": list(gate.approvers),
            },
        )


def _promote(script: _Script, ctx: _Context) -> None:
    state = script.state
    env = state.environment or ""
    script.act(Route(env, {state.version: 100}))
    script.act(RetireAllBut(env, keep=label(state.version)))
    script.notify(
        "promoted",
        f"v{state.version} serves 100% of {env}.",
        extra={"weight": 100, "replaced": state.stable},
    )
    if state.stage_index + 1 < len(state.stages):
        script.transition(
            "deploy",
            {"promoted_in": env},
            stage_index=state.stage_index + 1,
            step_index=0,
            weight=0,
            analysis_failures=0,
            stable=None,
            canary=None,
            holding_rounds=0,
        )
    else:
        script.finish(
            "succeeded", f"v{state.version} is in {env}", first=(("rollout.promoted", {"environment": env}),)
        )


def _rolling_back(script: _Script, ctx: _Context) -> None:
    state = script.state
    env, stable = state.environment or "", state.stable
    if stable is not None and label(stable) not in ctx.seen.deployed:
        script.act(Deploy(env, stable))
    script.act(Route(env, {stable: 100} if stable is not None else {}))
    script.act(Retire(env, label(state.version)))
    outcome = state.outcome or Outcome("rolled_back", "")
    if outcome.final != "rejected":
        back = f"v{stable} has all traffic again" if stable is not None else "the version gets no traffic"
        script.notify(
            "aborted" if outcome.final == "aborted" else "rolled_back",
            f"{outcome.reason}; {back}.",
            extra={"weight": 0, "stable_version": stable},
        )
    script.finish(outcome.final, outcome.reason)


# ---------------------------------------------------------------- the script


class _Script:
    """The plan being written: actions in order and the state so far.

    A change made with :meth:`update`, and the requests consumed, are written
    by the next :meth:`save` (at the end of the plan at the latest), so that a
    request leaves the row together with the state it led to.
    """

    def __init__(self, state: RolloutState, now: datetime, requests: Sequence[Request] = ()) -> None:
        self.state = state
        self.now = now
        self.requests = tuple(requests)
        self.actions: list[Action] = []
        self._consumed: set[str] = set()
        self._unsaved = False

    def plan(self) -> RolloutPlan:
        if self._consumed or self._unsaved:
            self.save(self.state)
        return RolloutPlan(tuple(self.actions), self.state)

    def update(self, state: RolloutState) -> None:
        self._unsaved = self._unsaved or state != self.state
        self.state = state

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def consume(self, request: Request) -> None:
        self._consumed.add(request.id)

    def drop_promotes(self) -> None:
        for request in self.requests:
            if request.kind == "promote":
                self.consume(request)

    def save(self, state: RolloutState) -> None:
        self.actions.append(Save(state, frozenset(self._consumed)))
        self._consumed.clear()
        self._unsaved = False
        self.state = state

    def audit(self, action: str, detail: Mapping[str, Any]) -> None:
        self.actions.append(Audit(action, self.state.environment, dict(detail)))

    def transition(
        self,
        phase: Phase,
        audit: Mapping[str, Any] | None = None,
        *,
        first: tuple[Record, ...] = (),
        **changes: Any,
    ) -> None:
        """Save the new phase, then audit ``first`` and the transition: the applier writes a save and the
        records after it in one transaction, so none of them is lost or written twice by a crash."""
        before = self.state.phase
        self.save(replace(self.state, phase=phase, **changes))
        for action, detail in first:
            self.audit(action, detail)
        detail = {"from": before, "to": phase, "step": self.state.step_index, **(audit or {})}
        self.audit("rollout.transition", detail)

    def roll_back(self, final: Ending, reason: str, *, stable: int | None = None) -> None:
        changes: dict[str, Any] = {"outcome": Outcome(final, reason), "stop": None}
        if stable is not None:
            changes["stable"] = stable
        self.drop_promotes()
        self.transition("rolling_back", {"final": final, "reason": reason}, **changes)

    def finish(self, final: Ending, reason: str, *, first: tuple[Record, ...] = ()) -> None:
        self.save(replace(self.state, phase=final, finished_at=self.now, outcome=Outcome(final, reason)))
        for action, detail in first:
            self.audit(action, detail)
        self.audit(f"rollout.{final}", {"reason": reason})

    def notify(
        self,
        kind: NoticeKind,
        message: str,
        *,
        step: int | None = None,
        occurrence: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        state = self.state
        release = state.release
        detail: dict[str, Any] = {
            "stage": state.environment,
            "weight": state.weight,
            "metrics": dict(release.metrics),
            "commit": release.commit,
            "run": release.run,
        }
        if release.baseline is not None:
            detail["baseline"] = dict(release.baseline.metrics)
            detail["baseline_version"] = release.baseline.version
        detail.update(extra or {})
        environment = state.environment or "-"
        self.actions.append(Notify(kind, environment, message, step, occurrence, detail))

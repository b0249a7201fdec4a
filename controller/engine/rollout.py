"""The rollout engine: observe each active rollout, plan its next step, apply the plan.

The controller's loop calls :meth:`RolloutEngine.tick` every second or so.
For each active rollout (a :class:`~controller.backends.store.RolloutRecord`)
the engine reads its typed state (:mod:`controller.engine.rollout_state`),
observes what the planner asks for (:func:`~controller.engine.rollout_plan.needs`:
the version serving the stage, what runs there, an analysis round when one
is due, the approvals at the gate) plus the requests people made, asks the
pure planner (:func:`~controller.engine.rollout_plan.plan_rollout`, where
every rule of the state machine lives) what to do, and performs the actions
through the serving backend, the metrics sources and the store.

Crash safety (Invariant 5): each :class:`~controller.engine.rollout_actions.Save`
is written with compare-and-set on the record's revision, before the side
effects of the state it records; every side effect is idempotent (deploying a
running version starts nothing; setting the current weights changes nothing;
notifications go through the outbox under their event key). A restarted
controller reads the record and carries on from the same state and step,
with the step's timer and the analysis counts it had. Every transition is in
the audit log. A side effect whose failure ends the rollout (a deploy, a
smoke test, a canary's routing) is reported back to the planner, which
plans the rollback; any other failure is logged and retried at the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller.backends.metrics import Measurement, MetricsSource
from controller.backends.notify import RolloutEvent
from controller.backends.serving import ServedVersion, ServingBackend, ServingError
from controller.backends.store import (
    Approval,
    ApprovalRecords,
    AuditLog,
    Conflict,
    ModelVersion,
    Outbox,
    Registry,
    RolloutChanges,
    RolloutRecord,
    RolloutRecords,
    Transactions,
)
from controller.clock import Clock
from controller.engine.analysis import judge
from controller.engine.commands import record_request
from controller.engine.notices import queue_event
from controller.engine.rollout_actions import (
    Action,
    Audit,
    Deploy,
    Failure,
    Notify,
    Observations,
    Retire,
    RetireAllBut,
    RolloutPlan,
    Route,
    Save,
    SmokeTest,
)
from controller.engine.rollout_plan import needs, plan_rollout, plan_start
from controller.engine.rollout_state import (
    ACTOR,
    TERMINAL_STATES,
    Baseline,
    Release,
    Request,
    RolloutState,
    encode,
    label,
    load_requests,
    load_state,
)
from controller.engine.verdicts import RoundVerdict, evaluate_round
from controller.specs.types import Catalog, Environment, Model

__all__ = ["TERMINAL_STATES", "RolloutEngine", "label"]

log = logging.getLogger("flywheel.rollout")


@dataclass(kw_only=True, eq=False)
class RolloutEngine:
    """Drives every active rollout one step per :meth:`tick`.

    ``catalog`` returns main's specs now (environments, policies, the model's
    rollout); ``served_version`` turns a registered version into what the
    serving backend runs; ``metrics`` picks the metrics source of an
    environment. Of the store it reads and moves the rollouts and the traffic
    history (``rollouts``), reads the approvals and the versions, and writes
    the audit log and the outbox (notifications).
    """

    rollouts: RolloutRecords
    approvals: ApprovalRecords
    registry: Registry
    audit: AuditLog
    outbox: Outbox
    transactions: Transactions  # a transition and its records are written together
    serving: ServingBackend
    metrics: Callable[[Environment], MetricsSource]
    catalog: Callable[[], Catalog]
    served_version: Callable[[ModelVersion, Model], ServedVersion]
    clock: Clock
    # (environment, model) -> how what serves there differs from the store (controller.engine.observed)
    discrepancies: Callable[[str, str], Sequence[str]] = lambda _environment, _model: ()
    # rollout id -> the error last logged for it
    _failing: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    # ---------------------------------------------------------------- start

    def start(
        self,
        version: ModelVersion,
        model: Model,
        *,
        author: str | None = None,
        baseline: ModelVersion | None = None,
    ) -> RolloutRecord | None:
        """Start rolling ``version`` out through the model's stages (idempotent per version).

        An older active rollout of the same model is asked to stop (superseded)
        first, so two versions never race for one environment.
        """
        stages = tuple(stage.environment for stage in model.rollout.stages)
        if not stages:
            log.info("%s v%s has no rollout stages; registered only", model.name, version.number)
            return None
        for other in self.rollouts.rollouts_for(model.name):
            if other.active and other.version != version.number:
                request = Request(
                    id=f"superseded-by-v{version.number}",
                    kind="superseded",
                    by=ACTOR,
                    at=self._now(),
                    reason=f"superseded by v{version.number}",
                )
                record_request(self.rollouts, other, request)
        release = Release(
            author=author,
            commit=version.commit,
            run=version.run_id,
            metrics=dict(version.metrics),
            baseline=Baseline(baseline.number, dict(baseline.metrics)) if baseline is not None else None,
        )
        fresh = RolloutState(model=model.name, version=version.number, stages=stages, release=release)
        rollout = self.rollouts.create_rollout(
            model=model.name, version=version.number, stages=stages, state="deploy", detail=encode(fresh, ())
        )
        state = load_state(rollout)
        plan = plan_start(state, created=rollout.revision == 1, now=self._now())
        return self._apply(rollout, state, plan, Observations(), model)

    # ----------------------------------------------------------------- tick

    def tick(self) -> None:
        """Advance every active rollout by at most one state; errors are logged per rollout.

        A rollout that fails the same way tick after tick is logged once, and
        again only when its error changes or after it advanced: a serving
        error in one line, anything else (a bug) with its traceback.
        """
        catalog = self.catalog()
        active = self.rollouts.active_rollouts()
        for gone in self._failing.keys() - {r.id for r in active}:
            del self._failing[gone]
        for rollout in active:
            what = f"rollout {rollout.id} of {rollout.model} v{rollout.version}"
            try:
                self._advance(rollout, catalog)
            except Conflict:
                log.info("rollout %s changed while it was advanced; next tick", rollout.id)
            except ServingError as exc:
                self._log_failure(rollout.id, f"{what} could not advance: {exc}", traceback=False)
            except Exception as exc:
                self._log_failure(
                    rollout.id, f"{what} could not advance: {type(exc).__name__}: {exc}", traceback=True
                )
            else:
                self._failing.pop(rollout.id, None)

    def _log_failure(self, rollout_id: int, message: str, *, traceback: bool) -> None:
        if self._failing.get(rollout_id) == message:
            log.debug("%s (again)", message)
            return
        self._failing[rollout_id] = message
        log.error("%s; retrying every tick, logged again only if this changes", message, exc_info=traceback)

    def run_until_settled(self, *, max_ticks: int = 100) -> None:
        """Tick until no rollout changes state (tests)."""
        for _ in range(max_ticks):
            before = [(r.id, r.revision) for r in self.rollouts.active_rollouts()]
            self.tick()
            if before == [(r.id, r.revision) for r in self.rollouts.active_rollouts()]:
                return

    def _advance(self, rollout: RolloutRecord, catalog: Catalog) -> None:
        state = load_state(rollout)
        model = catalog.models.get(rollout.model)
        try:
            seen = self._observe(state, load_requests(rollout), model, catalog)
            plan = plan_rollout(state, seen, catalog=catalog, now=self._now())
            self._apply(rollout, state, plan, seen, model, catalog=catalog)
        except ServingError as exc:
            if state.phase != "rolling_back":
                raise
            raise ServingError(f"rolling back in {state.environment}: {exc}") from exc

    # ------------------------------------------------------------- observe

    def _observe(
        self, state: RolloutState, requests: tuple[Request, ...], model: Model | None, catalog: Catalog
    ) -> Observations:
        wanted = needs(state, catalog, now=self._now())
        environment = catalog.environments.get(state.environment or "")
        if model is None or environment is None:
            return Observations(requests=requests)
        differs = tuple(self.discrepancies(environment.name, model.name))  # holding: no round measured
        deployed = self.serving.deployed(environment=environment, model=model.name) if wanted.deployed else ()
        approvals: list[Approval] = []
        if wanted.approvals:
            approvals = self.approvals.approvals_for(
                model=model.name, version=state.version, environment=environment.name
            )
        return Observations(
            requests=requests,
            stable=self._stable(environment.name, model.name, state.version) if wanted.stable else None,
            deployed=tuple(d.version for d in deployed),
            verdict=self._measure(model, environment, state.version)
            if wanted.verdict and not differs
            else None,
            approvals=tuple(approvals),
            discrepancies=differs,
        )

    def _measure(self, model: Model, environment: Environment, version: int) -> RoundVerdict:
        analysis = model.rollout.analysis
        source = self.metrics(environment)
        results = []
        for check in analysis.checks:
            try:
                measurement = source.measure(
                    check,
                    model=model.name,
                    version=label(version),
                    environment=environment.name,
                    window_seconds=analysis.interval_seconds,
                )
            except Exception as exc:  # a source must not raise; if it does, it is no data, never a pass
                measurement = Measurement.missing(f"metrics source failed: {exc}")
            results.append(judge(check, measurement))
        return evaluate_round(analysis, results)

    def _stable(self, environment: str, model: str, new: int) -> int | None:
        live = [
            (w, v)
            for v, w in self.rollouts.served_at(environment=environment, model=model, at=self._now())
            if v != new and w > 0
        ]
        return max(live)[1] if live else None

    # --------------------------------------------------------------- apply

    def _apply(
        self,
        rollout: RolloutRecord,
        state: RolloutState,
        plan: RolloutPlan,
        seen: Observations,
        model: Model | None,
        *,
        catalog: Catalog | None = None,
    ) -> RolloutRecord:
        """Perform ``plan``'s actions in order; a failure that ends the rollout is planned for at once."""
        pending = list(seen.requests)
        actions = list(plan.actions)
        while actions:
            action = actions.pop(0)
            if isinstance(action, Save):
                # A save and the records right after it (its audit entries and notices) are one
                # transaction: a crash keeps all of them or none, so a restart neither loses nor repeats one.
                records: list[Action] = []
                while actions and isinstance(actions[0], Audit | Notify):
                    records.append(actions.pop(0))
                pending = [r for r in pending if r.id not in action.consumed]
                with self.transactions.transaction():
                    rollout = self._save(rollout, state, action.state, pending)
                    for record in records:
                        self._perform(record, (rollout.model, rollout.version), model, catalog)
                state = action.state
                continue
            try:
                self._perform(action, (rollout.model, rollout.version), model, catalog)
            except ServingError as exc:
                ends = isinstance(action, Deploy | SmokeTest | Route) and action.failure is not None
                if not ends or catalog is None:
                    raise
                assert isinstance(action, Deploy | SmokeTest | Route)
                failure = Failure(action, str(exc))
                failed = replace(seen, requests=tuple(pending), verdict=None, failure=failure)
                again = plan_rollout(state, failed, catalog=catalog, now=self._now())
                return self._apply(rollout, state, again, failed, model, catalog=catalog)
        return rollout

    def _save(
        self, rollout: RolloutRecord, before: RolloutState, state: RolloutState, requests: list[Request]
    ) -> RolloutRecord:
        changes: RolloutChanges = {
            "state": state.phase,
            "stage_index": state.stage_index,
            "step_index": state.step_index,
            "weight": state.weight,
            "analysis_failures": state.analysis_failures,
            "paused": state.pause is not None,
            "finished_at": state.finished_at,
            "detail": encode(state, requests),
        }
        updated = self.rollouts.update_rollout(rollout.id, expected_revision=rollout.revision, **changes)
        if state.phase != before.phase:
            where = f"{state.model} v{state.version} in {state.environment}"
            if state.phase == "rolling_back":
                reason = state.outcome.reason if state.outcome is not None else ""
                log.warning("%s: rolling back (%s)", where, reason)
            elif state.phase in TERMINAL_STATES:
                reason = state.outcome.reason if state.outcome is not None else ""
                log.info("%s v%s: rollout %s — %s", state.model, state.version, state.phase, reason)
            else:
                log.info("%s: %s → %s", where, before.phase, state.phase)
        return updated

    def _perform(
        self, action: Action, subject: tuple[str, int], model: Model | None, catalog: Catalog | None
    ) -> None:
        """Perform ``action`` about ``subject``: (the model's name, the version); ``model`` is its spec."""
        name, number = subject
        if isinstance(action, Audit):
            self.audit.append_audit(
                actor=action.actor,
                action=action.action,
                model=name,
                version=number,
                environment=action.environment,
                detail=dict(action.detail),
            )
            return
        if isinstance(action, Notify):
            event = RolloutEvent(
                kind=action.kind,
                model=name,
                version=number,
                environment=action.environment,
                message=action.message,
                at=self._now(),
                detail=dict(action.detail),
                step=action.step,
                occurrence=action.occurrence,
            )
            queue_event(self.outbox, model, event)
            return
        assert not isinstance(action, Save), "a save is the applier's own"
        assert catalog is not None and model is not None, f"{action} needs main's catalog and the model"
        environment = catalog.environments[action.environment]
        if isinstance(action, Deploy):
            version = self.registry.get_version(model.name, action.version)
            self.serving.deploy(environment=environment, version=self.served_version(version, model))
        elif isinstance(action, SmokeTest):
            self.serving.smoke_test(
                environment=environment,
                model=model.name,
                version=label(action.version),
                inputs=[list(row) for row in action.inputs],
            )
        elif isinstance(action, Route):
            weights = {label(version): weight for version, weight in action.weights.items()}
            self.serving.set_weights(environment=environment, model=model.name, weights=weights)
            self.rollouts.record_traffic(
                at=self._now(), environment=environment.name, model=model.name, weights=dict(action.weights)
            )
        elif isinstance(action, Retire):
            self.serving.retire(environment=environment, model=model.name, version=action.version)
        elif isinstance(action, RetireAllBut):
            for deployed in self.serving.deployed(environment=environment, model=model.name):
                if deployed.version != action.keep:
                    self.serving.retire(environment=environment, model=model.name, version=deployed.version)

    # --------------------------------------------------- rollback requests

    def handle_rollback_request(self, payload: Mapping[str, Any]) -> None:
        """Carry out a queued ``rollback`` (see :mod:`.commands`): the controller passes the inbox payload."""
        self._rollback_finished(
            self.catalog(),
            str(payload["model"]),
            by=str(payload.get("by", "")),
            reason=str(payload.get("reason", "")),
        )

    def _rollback_finished(self, catalog: Catalog, model_name: str, *, by: str, reason: str) -> None:
        """Serve the previous version again everywhere the current one serves (no active rollout)."""
        model = catalog.models.get(model_name)
        if model is None:
            raise ValueError(f"{model_name} is not on main")
        now = self._now()
        for stage in model.rollout.stages:
            env = catalog.environments.get(stage.environment)
            back = self._previous(env.name, model_name, at=now) if env is not None else None
            if env is None or back is None:
                continue
            current, previous = back
            undo = {"to_version": previous}
            audited = {**undo, "reason": reason, "manual": True}
            actions: list[Action] = [
                Deploy(env.name, previous),
                Route(env.name, {previous: 100}),
                Retire(env.name, label(current)),
                Audit("rollout.rolled_back", env.name, audited, actor=by or ACTOR),
                Notify(
                    "rolled_back",
                    env.name,
                    f"Rolled back by {by or ACTOR} to v{previous}" + (f": {reason}" if reason else ""),
                    detail=undo,
                    occurrence=int(now.timestamp()),
                ),
            ]
            for action in actions:
                self._perform(action, (model_name, current), model, catalog)

    def _previous(self, environment: str, model: str, *, at: datetime) -> tuple[int, int] | None:
        """The version with most of ``environment``'s traffic at ``at``, and the one that served before it."""
        current = self.rollouts.served_at(environment=environment, model=model, at=at)
        if not current:
            return None
        current_version = max(current, key=lambda pair: pair[1])[0]
        for record in reversed(self.rollouts.serving_history(environment=environment, model=model)):
            if record.version != current_version and record.weight > 0:
                return current_version, record.version
        return None

    def _now(self) -> datetime:
        return self.clock.now()

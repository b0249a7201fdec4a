"""The rollout state machine: one model version, environment after environment, to production.

The controller's loop calls :meth:`RolloutEngine.tick` every second or so.
Each active rollout (a :class:`~controller.backends.store.RolloutRecord`) is
at one stage (an environment of the model's ``rollout.stages``) and in one
state:

``deploy``
    run the version's server in the stage's environment and smoke-test it
    with the spec's sample inputs; a version takes traffic only once both
    passed. With a version already serving there and canary steps in the
    spec, go to ``canary`` step 0; otherwise (first deployment, or no canary
    steps) straight to ``gate``.
``canary``
    the version takes the step's weight; every analysis interval the checks
    are measured and judged (:mod:`controller.engine.analysis`). The step is
    over when its duration has passed *and* the latest round passed; an
    inconclusive round holds (never promotes on missing data), and reaching
    the failure limit rolls back. ``flywheel promote`` skips the rest of the
    current step's wait (never an approval gate).
``gate``
    when the stage names an approval rule, wait until the rule is satisfied
    under main's policy; a rejection rolls back.
``promote``
    100% to the new version, record the serving history, retire the versions
    it replaced, then the next stage's ``deploy`` — or ``succeeded``.
``rolling_back``
    the stable version takes all traffic again, the new one is retired; then
    a terminal state: ``rolled_back`` (analysis), ``failed`` (deploy or smoke
    test), ``rejected``, ``aborted``.

Crash safety (Invariant 5): a transition is written to the store (with
compare-and-set on the record's revision) before the side effects of the new
state, and every side effect is idempotent (deploying a running version
starts nothing; setting the current weights changes nothing; notifications go
through the outbox under their event key). A restarted controller reads the
record and carries on from the same state and step, with the step's timer
and the analysis counts it had. Every transition is in the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.backends.metrics import Measurement, MetricsSource
from controller.backends.notify import EventKind, RolloutEvent
from controller.backends.serving import ServedVersion, ServingBackend, ServingError
from controller.backends.store import (
    Conflict,
    ModelVersion,
    RolloutChanges,
    RolloutRecord,
    Store,
)
from controller.clock import Clock
from controller.engine.analysis import AnalysisRun, Decision, RoundVerdict, evaluate_round, judge
from controller.engine.approvals import approval_state
from controller.engine.commands import policy_with_rule
from controller.engine.notices import queue_event
from controller.specs.types import Catalog, Environment, Model, Stage

__all__ = ["TERMINAL_STATES", "RolloutEngine", "label"]

log = logging.getLogger("flywheel.rollout")

TERMINAL_STATES = frozenset({"succeeded", "rolled_back", "failed", "rejected", "aborted"})
ACTOR = "flywheel"


def label(number: int) -> str:
    """The version label servers and routers use: ``v3``."""
    return f"v{number}"


@dataclass(frozen=True)
class _Ctx:
    rollout: RolloutRecord
    model: Model
    version: ModelVersion
    stage: Stage
    environment: Environment


class RolloutEngine:
    """Drives every active rollout one step per :meth:`tick`.

    ``catalog`` returns main's specs now (environments, policies, the model's
    rollout); ``served_version`` turns a registered version into what the
    serving backend runs; ``metrics`` picks the metrics source of an
    environment.
    """

    def __init__(
        self,
        *,
        store: Store,
        serving: ServingBackend,
        metrics: Callable[[Environment], MetricsSource],
        catalog: Callable[[], Catalog],
        served_version: Callable[[ModelVersion, Model], ServedVersion],
        clock: Clock,
    ) -> None:
        self.store = store
        self.serving = serving
        self.metrics = metrics
        self.catalog = catalog
        self.served_version = served_version
        self.clock = clock
        self._failing: dict[int, str] = {}  # rollout id -> the error last logged for it

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

        An older active rollout of the same model is superseded: it is rolled
        back first so two versions never race for one environment.
        """
        stages = tuple(stage.environment for stage in model.rollout.stages)
        if not stages:
            log.info("%s v%s has no rollout stages; registered only", model.name, version.number)
            return None
        for other in self.store.rollouts_for(model.name):
            if other.active and other.version != version.number:
                self._request_abort(other, kind="superseded", reason=f"superseded by v{version.number}")
        detail: dict[str, Any] = {
            "author": author,
            "commit": version.commit,
            "run": version.run_id,
            "metrics": version.metrics,
        }
        if baseline is not None:
            detail["baseline"] = {"version": baseline.number, "metrics": baseline.metrics}
        rollout = self.store.create_rollout(
            model=model.name, version=version.number, stages=stages, state="deploy", detail=detail
        )
        if rollout.revision == 1 and rollout.state == "deploy" and "started" not in rollout.detail:
            rollout = self._update(rollout, detail={**rollout.detail, "started": self._now().isoformat()})
            self._audit(rollout, "rollout.started", detail={"stages": list(stages), "author": author})
            self._notify(
                rollout,
                model,
                "rollout_started",
                f"Rollout of v{version.number} started: {' → '.join(stages)}.",
                extra={"stages": list(stages)},
            )
        return rollout

    # ----------------------------------------------------------------- tick

    def tick(self) -> None:
        """Advance every active rollout by at most one state; errors are logged per rollout.

        A rollout that fails the same way tick after tick is logged once, and
        again only when its error changes or after it advanced: a serving
        error in one line, anything else (a bug) with its traceback.
        """
        catalog = self.catalog()
        active = self.store.active_rollouts()
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
            before = [(r.id, r.revision) for r in self.store.active_rollouts()]
            self.tick()
            if before == [(r.id, r.revision) for r in self.store.active_rollouts()]:
                return

    def _advance(self, rollout: RolloutRecord, catalog: Catalog) -> None:
        model = catalog.models.get(rollout.model)
        if model is None:
            if "abort" not in rollout.detail:
                self._request_abort(rollout, kind="abort", reason=f"{rollout.model} is no longer on main")
            return
        version = self.store.get_version(rollout.model, rollout.version)
        env_name = rollout.environment
        stage = next((s for s in model.rollout.stages if s.environment == env_name), None)
        environment = catalog.environments.get(env_name or "")
        if environment is None:
            self._finish(rollout, final="aborted", reason=f"environment {env_name!r} is not defined on main")
            return
        if stage is None:  # the stage left the spec mid-rollout: undo it here and stop
            stage = Stage(environment=environment.name)
            if rollout.state != "rolling_back":
                reason = f"{env_name} is no longer a stage of {rollout.model}'s rollout on main"
                self._to_rolling_back(rollout, final="aborted", reason=reason)
                return
        ctx = _Ctx(rollout, model, version, stage, environment)

        abort = rollout.detail.get("abort")
        if isinstance(abort, dict) and rollout.state != "rolling_back":
            kind = str(abort.get("kind", "abort"))
            final = {"abort": "aborted", "rollback": "rolled_back", "superseded": "aborted"}.get(
                kind, "aborted"
            )
            by = abort.get("by", ACTOR)
            reason = f"{kind} by {by}" + (f": {abort['reason']}" if abort.get("reason") else "")
            self._to_rolling_back(rollout, final=final, reason=reason)
            return
        if rollout.paused and rollout.state != "rolling_back":
            self._notify_paused(ctx)
            return
        handler = {
            "deploy": self._deploy,
            "canary": self._canary,
            "gate": self._gate,
            "promote": self._promote,
            "rolling_back": self._rolling_back,
        }.get(rollout.state)
        if handler is None:
            log.error("rollout %s is in unknown state %r", rollout.id, rollout.state)
            return
        handler(ctx)

    # --------------------------------------------------------------- states

    def _deploy(self, ctx: _Ctx) -> None:
        rollout, env = ctx.rollout, ctx.environment
        stable = self._stable(env.name, ctx.model.name, ctx.version.number)
        served = self.served_version(ctx.version, ctx.model)
        try:
            self.serving.deploy(environment=env, version=served)
            self.serving.smoke_test(
                environment=env,
                model=ctx.model.name,
                version=label(ctx.version.number),
                inputs=[list(row) for row in ctx.model.serving.sample_inputs],
            )
        except ServingError as exc:
            reason = f"deploy to {env.name} failed: {exc}"
            self._to_rolling_back(rollout, final="failed", reason=reason, stable=stable)
            return
        self._audit(
            rollout,
            "rollout.deployed",
            detail={"stable": stable, "smoke_inputs": len(ctx.model.serving.sample_inputs)},
        )
        if ctx.stage.canary and stable is not None:
            self._enter_step(ctx, rollout, step=0, stable=stable, failures=0)
        else:
            why = "first deployment here" if stable is None else "no canary steps"
            self._transition(
                rollout, "gate", detail={"stable": stable}, audit_detail={"canary": f"skipped: {why}"}
            )

    def _enter_step(
        self, ctx: _Ctx, rollout: RolloutRecord, *, step: int, stable: int, failures: int
    ) -> None:
        weight = ctx.stage.canary[step].weight
        now = self._now()
        rollout = self._transition(
            rollout,
            "canary",
            step_index=step,
            weight=weight,
            analysis_failures=failures,
            detail={
                "stable": stable,
                "step_started_at": now.isoformat(),
                "last_round_at": None,
                "rounds_in_step": 0,
                "applied": None,
                "promote": None,
            },
            audit_detail={"step": step, "weight": weight},
        )
        self._apply_step(ctx, rollout)

    def _apply_step(self, ctx: _Ctx, rollout: RolloutRecord) -> RolloutRecord | None:
        """Route the current step's weights unless done already; ``None`` when it failed (rolling back)."""
        stable = rollout.detail.get("stable")
        step = rollout.step_index
        new = label(ctx.version.number)
        marker = f"{rollout.stage_index}:{step}"
        if rollout.detail.get("applied") == marker:
            return rollout
        weights = {new: rollout.weight}
        if isinstance(stable, int) and rollout.weight < 100:
            weights[label(stable)] = 100 - rollout.weight
        try:
            self.serving.set_weights(environment=ctx.environment, model=ctx.model.name, weights=weights)
        except ServingError as exc:
            self._to_rolling_back(rollout, final="failed", reason=f"could not route traffic: {exc}")
            return None
        self.store.record_traffic(
            at=self._now(),
            environment=ctx.environment.name,
            model=ctx.model.name,
            weights={int(k[1:]): w for k, w in weights.items()},
        )
        rollout = self._update(rollout, detail={**rollout.detail, "applied": marker})
        self._notify(
            rollout,
            ctx.model,
            "step_reached",
            f"Canary step {step + 1} of {len(ctx.stage.canary)}: {rollout.weight}% of traffic.",
            step=step,
            extra={"weight": rollout.weight, "stable_version": stable},
        )
        return rollout

    def _canary(self, ctx: _Ctx) -> None:
        rollout = self._apply_step(ctx, ctx.rollout)
        if rollout is None:
            return
        stable = rollout.detail.get("stable")
        step = rollout.step_index
        now = self._now()
        analysis = ctx.model.rollout.analysis
        last_round = _time(rollout.detail.get("last_round_at"))
        if last_round is None or now - last_round >= timedelta(seconds=analysis.interval_seconds):
            verdict = self._measure(ctx, window=analysis.interval_seconds)
            run = AnalysisRun(
                failures=rollout.analysis_failures, holding_rounds=int(rollout.detail.get("holding", 0))
            )
            run = run.after(verdict, analysis)
            decision = run.decision or Decision("hold", verdict.summary)
            detail = {
                **rollout.detail,
                "last_round_at": now.isoformat(),
                "rounds_in_step": int(rollout.detail.get("rounds_in_step", 0)) + 1,
                "holding": run.holding_rounds,
                "last_verdict": verdict.to_json(),
                "last_decision": {"action": decision.action, "reason": decision.reason},
            }
            rollout = self._update(rollout, analysis_failures=run.failures, detail=detail)
            self._audit(
                rollout, "analysis.round", detail={"verdict": verdict.to_json(), "decision": decision.action}
            )
            if decision.action == "rollback":
                self._notify(
                    rollout,
                    ctx.model,
                    "analysis_failed",
                    decision.reason,
                    step=step,
                    occurrence=run.failures,
                    extra={"analysis": verdict.to_json()},
                )
                self._to_rolling_back(rollout, final="rolled_back", reason=decision.reason)
                return
            if verdict.outcome == "failed":
                self._notify(
                    rollout,
                    ctx.model,
                    "analysis_failed",
                    decision.reason,
                    step=step,
                    occurrence=run.failures,
                    extra={"analysis": verdict.to_json()},
                )
            elif verdict.outcome == "inconclusive" and run.holding_rounds == 1:
                streak = int(rollout.detail.get("inconclusive_streaks", 0))
                rollout = self._update(rollout, detail={**rollout.detail, "inconclusive_streaks": streak + 1})
                self._notify(
                    rollout,
                    ctx.model,
                    "analysis_inconclusive",
                    decision.reason,
                    step=step,
                    occurrence=streak,
                    extra={"analysis": verdict.to_json()},
                )
        promote = rollout.detail.get("promote")
        promoted = isinstance(promote, dict) and (promote.get("stage"), promote.get("step")) == (
            rollout.stage_index,
            step,
        )
        started = _time(rollout.detail.get("step_started_at")) or now
        elapsed = now - started >= timedelta(seconds=ctx.stage.canary[step].duration_seconds)
        last = rollout.detail.get("last_decision")
        passed = isinstance(last, dict) and last.get("action") == "continue"
        if not promoted and not (elapsed and passed):
            return
        if step + 1 < len(ctx.stage.canary):
            self._enter_step(
                ctx, rollout, step=step + 1, stable=int(stable or 0), failures=rollout.analysis_failures
            )
        else:
            self._transition(
                rollout,
                "gate",
                audit_detail={
                    "promoted_by": promote.get("by") if promoted and isinstance(promote, dict) else None
                },
            )

    def _gate(self, ctx: _Ctx) -> None:
        rollout = ctx.rollout
        rule_name = ctx.stage.approval
        if not rule_name:
            self._transition(rollout, "promote")
            return
        catalog = self.catalog()
        found = policy_with_rule(catalog, rule_name)
        if found is None:
            reason = f"approval rule {rule_name!r} is not in main's policies; waiting"
            self._notify(rollout, ctx.model, "awaiting_approval", reason, extra={"rule": rule_name})
            return
        policy, rule = found
        state = approval_state(
            policy=policy,
            rule=rule,
            model=ctx.model.name,
            version=ctx.version.number,
            environment=ctx.environment.name,
            approvals=self.store.approvals_for(
                model=ctx.model.name, version=ctx.version.number, environment=ctx.environment.name
            ),
            now=self._now(),
        )
        if state.rejected:
            self._notify(
                rollout, ctx.model, "rejected", state.message, extra={"rejecters": list(state.rejecters)}
            )
            self._to_rolling_back(rollout, final="rejected", reason=state.message)
            return
        if state.satisfied:
            self._notify(
                rollout, ctx.model, "approved", state.message, extra={"approvers": list(state.approvers)}
            )
            self._transition(
                rollout, "promote", audit_detail={"approvers": list(state.approvers), "rule": rule.name}
            )
            return
        groups = list(rule.groups)
        may = "a member of " + " or ".join(groups)
        self._notify(
            rollout,
            ctx.model,
            "awaiting_approval",
            f"Waiting for approval ({rule.name}): {state.message}.",
            extra={
                "rule": rule.name,
                "groups": groups,
                "may_approve": may,
                "missing": state.missing,
                "approvers": list(state.approvers),
            },
        )

    def _promote(self, ctx: _Ctx) -> None:
        rollout, env = ctx.rollout, ctx.environment
        new = label(ctx.version.number)
        self.serving.set_weights(environment=env, model=ctx.model.name, weights={new: 100})
        self.store.record_traffic(
            at=self._now(), environment=env.name, model=ctx.model.name, weights={ctx.version.number: 100}
        )
        for deployed in self.serving.deployed(environment=env, model=ctx.model.name):
            if deployed.version != new:
                self.serving.retire(environment=env, model=ctx.model.name, version=deployed.version)
        self._notify(
            rollout,
            ctx.model,
            "promoted",
            f"v{ctx.version.number} serves 100% of {env.name}.",
            extra={"weight": 100, "replaced": rollout.detail.get("stable")},
        )
        if rollout.stage_index + 1 < len(rollout.stages):
            self._transition(
                rollout,
                "deploy",
                stage_index=rollout.stage_index + 1,
                step_index=0,
                weight=0,
                analysis_failures=0,
                detail={"stable": None, "applied": None, "holding": 0},
                audit_detail={"promoted_in": env.name},
            )
        else:
            self._audit(rollout, "rollout.promoted", detail={"environment": env.name})
            self._finish(rollout, final="succeeded", reason=f"v{ctx.version.number} is in {env.name}")

    def _rolling_back(self, ctx: _Ctx) -> None:
        rollout, env = ctx.rollout, ctx.environment
        new = label(ctx.version.number)
        stable = rollout.detail.get("stable")
        weights = {label(stable): 100} if isinstance(stable, int) else {}
        try:
            if isinstance(stable, int):
                deployed = {d.version for d in self.serving.deployed(environment=env, model=ctx.model.name)}
                if label(stable) not in deployed:
                    previous = self.store.get_version(ctx.model.name, stable)
                    self.serving.deploy(environment=env, version=self.served_version(previous, ctx.model))
            self.serving.set_weights(environment=env, model=ctx.model.name, weights=weights)
            self.store.record_traffic(
                at=self._now(),
                environment=env.name,
                model=ctx.model.name,
                weights={int(k[1:]): w for k, w in weights.items()},
            )
            self.serving.retire(environment=env, model=ctx.model.name, version=new)
        except ServingError as exc:  # logged by tick, once while it repeats; retried next tick
            raise ServingError(f"rolling back in {env.name}: {exc}") from exc
        final = str(rollout.detail.get("final", "rolled_back"))
        reason = str(rollout.detail.get("reason", ""))
        kind: EventKind = "aborted" if final == "aborted" else "rolled_back"
        if final != "rejected":
            back = (
                f"v{stable} has all traffic again"
                if isinstance(stable, int)
                else "the version gets no traffic"
            )
            self._notify(
                rollout, ctx.model, kind, f"{reason}; {back}.", extra={"weight": 0, "stable_version": stable}
            )
        self._finish(rollout, final=final, reason=reason)

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
            if env is None:
                continue
            current = self.store.served_at(environment=env.name, model=model_name, at=now)
            if not current:
                continue
            current_version = max(current, key=lambda pair: pair[1])[0]
            previous = None
            for record in reversed(self.store.serving_history(environment=env.name, model=model_name)):
                if record.version != current_version and record.weight > 0:
                    previous = record.version
                    break
            if previous is None:
                continue
            version = self.store.get_version(model_name, previous)
            self.serving.deploy(environment=env, version=self.served_version(version, model))
            self.serving.set_weights(environment=env, model=model_name, weights={label(previous): 100})
            self.store.record_traffic(
                at=self._now(), environment=env.name, model=model_name, weights={previous: 100}
            )
            self.serving.retire(environment=env, model=model_name, version=label(current_version))
            self.store.append_audit(
                actor=by or ACTOR,
                action="rollout.rolled_back",
                model=model_name,
                version=current_version,
                environment=env.name,
                detail={"to_version": previous, "reason": reason, "manual": True},
            )
            event = RolloutEvent(
                kind="rolled_back",
                model=model_name,
                version=current_version,
                environment=env.name,
                at=now,
                message=f"Rolled back by {by or ACTOR} to v{previous}" + (f": {reason}" if reason else ""),
                detail={"to_version": previous},
                occurrence=int(now.timestamp()),
            )
            queue_event(self.store, model, event)

    # ------------------------------------------------------------- helpers

    def _measure(self, ctx: _Ctx, *, window: float) -> RoundVerdict:
        analysis = ctx.model.rollout.analysis
        source = self.metrics(ctx.environment)
        results = []
        for check in analysis.checks:
            try:
                measurement = source.measure(
                    check,
                    model=ctx.model.name,
                    version=label(ctx.version.number),
                    environment=ctx.environment.name,
                    window_seconds=window,
                )
            except Exception as exc:  # a source must not raise; if it does, it is no data, never a pass
                measurement = Measurement.missing(f"metrics source failed: {exc}")
            results.append(judge(check, measurement))
        return evaluate_round(analysis, results)

    def _stable(self, environment: str, model: str, new: int) -> int | None:
        live = [
            (w, v)
            for v, w in self.store.served_at(environment=environment, model=model, at=self._now())
            if v != new and w > 0
        ]
        return max(live)[1] if live else None

    def _request_abort(self, rollout: RolloutRecord, *, kind: str, reason: str) -> None:
        detail = {
            **rollout.detail,
            "abort": {"kind": kind, "by": ACTOR, "reason": reason, "at": self._now().isoformat()},
        }
        self._update(rollout, detail=detail)

    def _to_rolling_back(
        self, rollout: RolloutRecord, *, final: str, reason: str, stable: int | None = None
    ) -> RolloutRecord:
        log.warning(
            "%s v%s in %s: rolling back (%s)", rollout.model, rollout.version, rollout.environment, reason
        )
        detail: dict[str, Any] = {"final": final, "reason": reason}
        if stable is not None:
            detail["stable"] = stable
        return self._transition(
            rollout,
            "rolling_back",
            detail=detail,
            audit_detail={"final": final, "reason": reason},
        )

    def _finish(self, rollout: RolloutRecord, *, final: str, reason: str) -> None:
        rollout = self._update(
            rollout, state=final, finished_at=self._now(), detail={**rollout.detail, "reason": reason}
        )
        self._audit(rollout, f"rollout.{final}", detail={"reason": reason})
        log.info("%s v%s: rollout %s — %s", rollout.model, rollout.version, final, reason)

    def _transition(
        self,
        rollout: RolloutRecord,
        state: str,
        *,
        detail: Mapping[str, Any] | None = None,
        audit_detail: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> RolloutRecord:
        merged = {**rollout.detail, **(detail or {})}
        updated = self._update(rollout, state=state, detail=merged, **changes)
        self._audit(
            updated,
            "rollout.transition",
            detail={"from": rollout.state, "to": state, "step": updated.step_index, **(audit_detail or {})},
        )
        log.info(
            "%s v%s in %s: %s → %s", updated.model, updated.version, updated.environment, rollout.state, state
        )
        return updated

    def _update(self, rollout: RolloutRecord, **changes: Any) -> RolloutRecord:
        typed: RolloutChanges = changes  # type: ignore[assignment]
        return self.store.update_rollout(rollout.id, expected_revision=rollout.revision, **typed)

    def _audit(self, rollout: RolloutRecord, action: str, *, detail: Mapping[str, Any]) -> None:
        self.store.append_audit(
            actor=ACTOR,
            action=action,
            model=rollout.model,
            version=rollout.version,
            environment=rollout.environment,
            detail=dict(detail),
        )

    def _notify_paused(self, ctx: _Ctx) -> None:
        pause = ctx.rollout.detail.get("pause") or {}
        by = pause.get("by", "someone") if isinstance(pause, dict) else "someone"
        occurrence = int(ctx.rollout.detail.get("pauses_seen", 0))
        marker = pause.get("at") if isinstance(pause, dict) else None
        if ctx.rollout.detail.get("pause_announced") == marker:
            return
        rollout = self._update(
            ctx.rollout,
            detail={**ctx.rollout.detail, "pause_announced": marker, "pauses_seen": occurrence + 1},
        )
        self._notify(rollout, ctx.model, "paused", f"Paused by {by}.", occurrence=occurrence)

    def _notify(
        self,
        rollout: RolloutRecord,
        model: Model,
        kind: EventKind,
        message: str,
        *,
        step: int | None = None,
        occurrence: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        detail: dict[str, Any] = {
            "stage": rollout.environment,
            "weight": rollout.weight,
            "metrics": rollout.detail.get("metrics", {}),
            "commit": rollout.detail.get("commit"),
            "run": rollout.detail.get("run"),
        }
        baseline = rollout.detail.get("baseline")
        if isinstance(baseline, dict):
            detail["baseline"] = baseline.get("metrics", {})
            detail["baseline_version"] = baseline.get("version")
        detail.update(extra or {})
        event = RolloutEvent(
            kind=kind,
            model=rollout.model,
            version=rollout.version,
            environment=rollout.environment or "-",
            message=message,
            at=self._now(),
            detail=detail,
            step=step,
            occurrence=occurrence,
        )
        queue_event(self.store, model, event)

    def _now(self) -> datetime:
        return self.clock.now()


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value)

"""Judging a finished run and telling people: gates against production, the report, the status, the audit.

The proposal reconciler (:mod:`controller.engine.proposals`) hands every run
that ended (or was reused, or is judged again because production moved on)
to :meth:`Judge.judge_and_report`: the run's gates are evaluated against the
version serving production now (``main``'s environments decide which one
that is), the result goes to the audit log, the review report and the commit
status go to the forge (not for the release branch, which has no proposal),
and a release run that passed is handed to the release hook. Spec errors are
reported here too, and what a run left is recorded here (its result, or the
run a cache hit reused).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol, Unpack

from controller.backends.forge import CommitState, Forge, ReviewTarget
from controller.backends.pipelines import RunResult
from controller.backends.store import AuditLog, ModelVersion, NewRun, Run, RunChanges
from controller.backends.store import StepResult as StoredStep
from controller.clock import Clock
from controller.drift.profile import ProfileError, build_profile, write_profile
from controller.engine.gates import GateResult, evaluate_gates, failed_gates
from controller.engine.plan import ReportSpecErrors, ReuseRun
from controller.engine.report import ReviewReport, StepLine, render_report
from controller.engine.retrain import RETRAIN_PREFIX
from controller.specs.types import Catalog, Model

__all__ = [
    "RELEASE_TRIGGER",
    "TRAINING_TRIGGERS",
    "TRIGGER",
    "Finished",
    "Judge",
    "JudgeRecords",
    "ProductionRecords",
    "ReleaseHook",
    "production_environment",
    "production_version",
]

log = logging.getLogger("flywheel.proposals")

TRIGGER = "proposal"
RELEASE_TRIGGER = "merge"
TRAINING_TRIGGERS = (TRIGGER, RELEASE_TRIGGER)

# Called when a run of the release branch has been judged: (run, model, state).
ReleaseHook = Callable[[Run, Model, CommitState], object]


class ProductionRecords(Protocol):
    """What :func:`production_version` reads: the traffic history, and the version found there."""

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]: ...

    def get_version(self, model: str, number: int) -> ModelVersion: ...


class JudgeRecords(ProductionRecords, AuditLog, Protocol):
    """What :class:`Judge` reads and writes: runs and the audit log, written together in one transaction."""

    def create_run(self, **run: Unpack[NewRun]) -> Run: ...

    def update_run(self, run_id: int, **changes: Unpack[RunChanges]) -> Run: ...

    def get_run(self, run_id: int) -> Run: ...

    def transaction(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class Finished:
    run_id: int
    model: str
    ref: str
    state: CommitState
    description: str


@dataclass(kw_only=True, eq=False)
class Judge:
    """Judges runs and reports them on the forge; ``release_branch``'s runs go to ``on_release`` instead."""

    store: JudgeRecords
    forge: Forge
    work_dir: Path
    release_branch: str
    clock: Clock
    on_release: ReleaseHook | None = None

    def record_reuse(self, action: ReuseRun, source: Run, *, trigger: str) -> Run:
        """Record a cache hit: a succeeded run of ``action``'s head with ``source``'s results and artifact."""
        now = self.clock.now()
        with self.store.transaction():
            run = self.store.create_run(
                model=action.model,
                ref=action.ref,
                commit=action.commit,
                cache_key=action.cache_key,
                trigger=trigger,
                params=source.params,
                data_fingerprints=source.data_fingerprints,
                environment_hash=source.environment_hash,
                status="succeeded",
                reused_from=source.id,
            )
            steps = {
                name: StoredStep(status="succeeded", cache_hit=True, log_path=step.log_path)
                for name, step in source.steps.items()
            }
            run = self.store.update_run(
                run.id,
                steps=steps,
                metrics=source.metrics,
                artifact_path=source.artifact_path,
                artifact_digest=source.artifact_digest,
                image=source.image,
                started_at=now,
                finished_at=now,
            )
            self.audit("run.reused", run, detail={"source_run": source.id, "cache_key": run.cache_key})
        return run

    def record_result(self, run_id: int, result: RunResult) -> Run:
        """Record how a run ended: its steps, metrics and artifact (with the artifact's digest)."""
        if result.status == "cancelled":
            return self.store.update_run(run_id, status="cancelled", finished_at=self.clock.now())
        steps = {
            step.name: StoredStep(
                status=step.status,
                duration_seconds=step.duration_seconds,
                log_path=str(step.log_path) if step.log_path else None,
                exit_code=step.exit_code,
            )
            for step in result.steps
        }
        model_dir = result.model_dir
        if model_dir is not None and result.reference_data is not None and result.status == "succeeded":
            result = _with_reference_profile(result, model_dir, result.reference_data)
        digest = _digest_dir(model_dir) if model_dir is not None and result.status == "succeeded" else None
        return self.store.update_run(
            run_id,
            status=result.status,
            steps=steps,
            metrics=dict(result.metrics),
            environment_hash=result.environment_hash or self.store.get_run(run_id).environment_hash,
            artifact_path=str(model_dir) if digest else None,
            artifact_digest=digest,
            image=result.image,
            finished_at=self.clock.now(),
            error=result.error or None,
        )

    def fail_to_start(self, run: Run, model: Model, main_catalog: Catalog, why: str) -> Finished:
        """Record a run that cannot start as an error, report it and say so once, like a finished run."""
        run = self.store.update_run(run.id, status="error", error=why, finished_at=self.clock.now())
        self.audit("run.finished", run, detail={"status": "error", "error": why})
        self.publish(run, model, main_catalog, outcome="error", summary_line=why)
        self.set_status(run, "error", why)
        log.error(
            "%s on %s: error — %s",
            model.name,
            run.ref,
            why,
            extra={"proposal": run.ref, "model": model.name, "run": run.id, "state": "error"},
        )
        return Finished(run.id, run.model, run.ref, "error", why)

    def judge_and_report(
        self,
        run: Run,
        model: Model,
        main_catalog: Catalog,
        *,
        result: RunResult | None,
        rejudged_from: tuple[int | None] | None = None,
    ) -> Finished:
        """Judge a finished run's gates against production now, publish its report and status.

        ``rejudged_from`` holds the production version the run was judged
        against before, when it is judged again because production moved on
        (see :class:`~controller.engine.plan.Rejudge`).
        """
        production = self.production_version(model, main_catalog)
        baseline = production.metrics if production is not None else None
        gates: list[GateResult] = []
        if run.status == "succeeded":
            gates = evaluate_gates(model, metrics=run.metrics, baseline=baseline)
            run = self.store.update_run(
                run.id,
                gates=[g.to_json() for g in gates],
                baseline_version=production.number if production is not None else None,
            )
        failed = failed_gates(gates)
        state: CommitState
        if run.status != "succeeded":
            state = "error"
            description = _error_words(run, result)
        elif failed:
            state = "failure"
            description = "gate failed: " + "; ".join(g.message for g in failed)
        else:
            state = "success"
            description = _success_words(gates, model, run.metrics)
        judged: dict[str, object] = {
            "status": run.status,
            "state": state,
            "gates": [g.to_json() for g in gates],
            "compared_with": run.baseline_version,
        }
        if rejudged_from is not None:
            self.audit("run.rejudged", run, detail={**judged, "compared_before": rejudged_from[0]})
        else:
            self.audit("run.finished", run, detail=judged)
        outcome = {"success": "success", "failure": "failure", "error": "error", "pending": "running"}[state]
        self.publish(
            run,
            model,
            main_catalog,
            outcome=outcome,
            summary_line=description,
            gates=gates,
            result=result,
            production=production,
            rejudged_from=rejudged_from,
        )
        self.set_status(run, state, description)
        if run.ref == self.release_branch and self.on_release is not None and state == "success":
            self.on_release(run, model, state)
        log.info(
            "%s on %s: %s — %s",
            model.name,
            run.ref,
            state,
            description,
            extra={"proposal": run.ref, "model": model.name, "run": run.id, "state": state},
        )
        return Finished(run.id, run.model, run.ref, state, description)

    def publish(
        self,
        run: Run,
        model: Model,
        main_catalog: Catalog,
        *,
        outcome: str,
        summary_line: str,
        gates: list[GateResult] | None = None,
        result: RunResult | None = None,
        production: ModelVersion | None = None,
        rejudged_from: tuple[int | None] | None = None,
    ) -> None:
        main_model = main_catalog.models.get(model.name)
        params_changed = _params_diff(main_model.params if main_model else {}, model.params)
        steps: list[StepLine] = []
        if result is not None:
            steps = [
                StepLine(
                    name=s.name,
                    status=s.status,
                    duration_seconds=s.duration_seconds,
                    attempts=s.attempts,
                    log_path=str(s.log_path) if s.log_path else None,
                    log_tail=s.log_tail,
                )
                for s in result.steps
            ]
        elif run.reused_from is not None:
            steps = [StepLine(name=name, status="cached") for name in run.steps]
        else:  # judged again later: the steps as the store kept them
            steps = [
                StepLine(name=name, status=s.status, duration_seconds=s.duration_seconds, log_path=s.log_path)
                for name, s in run.steps.items()
            ]
        logs = str(self.work_dir / "runs" / str(run.reused_from or run.id) / "logs")
        report = ReviewReport(
            model=model.name,
            proposal=run.ref,
            commit=run.commit,
            outcome=outcome,  # type: ignore[arg-type]
            summary=summary_line,
            run_id=str(run.id),
            cache_key=run.cache_key,
            reused_run=str(run.reused_from) if run.reused_from is not None else None,
            metrics=run.metrics,
            baseline=production.metrics if production is not None else None,
            baseline_version=f"v{production.number}" if production is not None else None,
            rejudged_from=None if rejudged_from is None else _label(rejudged_from[0]),
            directions={m.name: m.direction for m in model.metrics},
            primary_metric=model.primary_metric,
            gates=gates or [],
            params_changed=params_changed,
            data_fingerprints=run.data_fingerprints,
            steps=steps,
            logs_location=logs if run.status not in ("queued",) else None,
            why=self._retrain_reason(run),
        )
        if run.ref == self.release_branch:
            return
        self.forge.publish_report(ReviewTarget(run.ref, model.name, run.commit), render_report(report))

    def _retrain_reason(self, run: Run) -> str:
        """Why a retrain branch's commit was made: the body of the trigger entry that committed it."""
        if not run.ref.startswith(RETRAIN_PREFIX):
            return ""
        for entry in reversed(self.store.audit(model=run.model, actions=("trigger.fired",), limit=20)):
            if entry.detail.get("branch") == run.ref and entry.detail.get("commit") == run.commit:
                return str(entry.detail.get("body") or entry.detail.get("reason") or "")
        return ""

    def set_status(self, run: Run, state: CommitState, description: str) -> None:
        if run.ref == self.release_branch:
            return
        self.forge.set_status(ReviewTarget(run.ref, run.model, run.commit), state, description[:140])

    def report_spec_errors(self, action: ReportSpecErrors) -> None:
        errors = [str(e) for e in action.errors] or ["the spec could not be loaded"]
        with self.store.transaction():
            run = self.store.create_run(
                model=action.model,
                ref=action.ref,
                commit=action.commit,
                cache_key="",
                trigger=TRIGGER,
                status="error",
            )
            run = self.store.update_run(run.id, error="\n".join(errors), finished_at=self.clock.now())
            self.audit("run.spec_errors", run, detail={"errors": errors})
        body = render_report(
            ReviewReport(
                model=action.model,
                proposal=action.ref,
                commit=action.commit,
                outcome="error",
                summary=f"The spec has {len(errors)} error(s); nothing was trained for this model.",
                run_id=str(run.id),
                spec_errors=errors,
            )
        )
        target = ReviewTarget(action.ref, action.model, action.commit)
        self.forge.publish_report(target, body)
        self.forge.set_status(target, "error", f"spec errors: {errors[0]}"[:140])
        log.warning("%s on %s has spec errors: %s", action.model, action.ref, "; ".join(errors))

    def production_version(self, model: Model, main_catalog: Catalog) -> ModelVersion | None:
        return production_version(self.store, model, main_catalog, at=self.clock.now())

    def audit(self, action: str, run: Run, *, detail: dict[str, object]) -> None:
        self.store.append_audit(
            actor="flywheel",
            action=action,
            model=run.model,
            version=None,
            environment=None,
            detail={"run": run.id, "ref": run.ref, "commit": run.commit, **detail},
        )


def production_environment(model: Model, catalog: Catalog) -> str | None:
    """The environment whose serving version is the model's baseline: the one marked production."""
    for stage in model.rollout.stages:
        environment = catalog.environments.get(stage.environment)
        if environment is not None and environment.production:
            return environment.name
    return model.rollout.stages[-1].environment if model.rollout.stages else None


def production_version(
    store: ProductionRecords, model: Model, catalog: Catalog, *, at: datetime
) -> ModelVersion | None:
    """The version that takes most of the production environment's traffic at ``at``, if any."""
    environment = production_environment(model, catalog)
    if environment is None:
        return None
    served = store.served_at(environment=environment, model=model.name, at=at)
    live = [(weight, version) for version, weight in served if weight > 0]
    return store.get_version(model.name, max(live)[1]) if live else None


def _params_diff(main: Mapping[str, object], here: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    return {
        key: (main.get(key), here.get(key))
        for key in sorted(set(main) | set(here))
        if main.get(key) != here.get(key)
    }


def _success_words(gates: list[GateResult], model: Model, metrics: Mapping[str, float]) -> str:
    primary = model.primary_metric
    headline = f"{primary} = {metrics[primary]:.4g}" if primary and primary in metrics else "trained"
    passed = sum(1 for g in gates if g.outcome == "passed")
    no_baseline = sum(1 for g in gates if g.outcome == "no_baseline")
    words = f"{headline}; {passed} gate(s) passed"
    return words + (f", {no_baseline} with no baseline" if no_baseline else "")


def _error_words(run: Run, result: RunResult | None) -> str:
    steps = result.steps if result is not None else ()
    failing = next((s for s in steps if s.status in ("failed", "error")), None)
    if failing is None:
        return run.error or run.status
    why = failing.message or f"exit code {failing.exit_code}"
    return f"step {failing.name} {failing.status}: {why}"


def _label(version: int | None) -> str:
    return f"v{version}" if version is not None else "nothing"


def _with_reference_profile(result: RunResult, model_dir: Path, reference: Path) -> RunResult:
    """Profile the train step's reference data into the artifact (so its digest covers the profile).

    Reference data that cannot be profiled fails the run, saying why: a
    version without its reference would serve unwatched.
    """
    try:
        write_profile(build_profile(reference), model_dir)
    except ProfileError as exc:
        return replace(result, status="failed", error=f"FLYWHEEL_REFERENCE_DATA: {exc}")
    return result


def _digest_dir(path: Path) -> str | None:
    """sha256 over the names and contents of the files under ``path``: the artifact digest."""
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()

"""The proposal reconciler: train every change proposed to a model and report the result.

Called by the controller's main loop (``flywheel run``) once per poll. Each
pass observes the repository (branch heads, the models each proposal
changes, their cache keys) and the store (earlier runs), asks the pure
planner (:mod:`controller.engine.plan`) what to do, and applies the actions
through the backends: the pipeline runner, the forge and the store. Runs go
on in the background; :meth:`ProposalReconciler.collect` picks up the ones
that ended, judges their gates against production and publishes the report.

Decisions use ``main``'s environments and policies, never the proposal's
(a proposal never judges itself); every run result goes to the audit log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from controller.backends import data as data_inputs
from controller.backends.forge import CommitState, Forge, ReviewTarget
from controller.backends.git import GitError, Repository
from controller.backends.pipelines import (
    PipelineRunner,
    RunHandle,
    RunRequest,
    RunResult,
    StepEvent,
    environment_hash,
)
from controller.backends.store import ModelVersion, Run, Store
from controller.backends.store import StepResult as StoredStep
from controller.clock import Clock
from controller.engine.gates import GateResult, evaluate_gates, failed_gates
from controller.engine.identity import RunInputs, pipeline_identity
from controller.engine.plan import (
    Action,
    CancelRun,
    ModelHead,
    PriorRun,
    Rejudge,
    ReportSpecErrors,
    ResumeRun,
    ReuseRun,
    StartRun,
    plan_closed,
    plan_proposal,
)
from controller.engine.report import ReviewReport, StepLine, render_report
from controller.specs.types import Catalog, Environment, Location, Model, SpecError

log = logging.getLogger("flywheel.proposals")

TRIGGER = "proposal"
RELEASE_TRIGGER = "merge"
TRAINING_TRIGGERS = (TRIGGER, RELEASE_TRIGGER)

# Called when a run of the release branch has been judged: (run, model, state).
ReleaseHook = Callable[[Run, Model, CommitState], object]


@dataclass
class _Active:
    run_id: int
    model: Model
    ref: str
    commit: str
    handle: RunHandle
    started: float


@dataclass
class PassSummary:
    """What one reconcile pass did, for the CLI and tests."""

    started: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    spec_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    run_id: int
    model: str
    ref: str
    state: CommitState
    description: str


class ProposalReconciler:
    """Plans and applies the training of proposals on one repository."""

    def __init__(
        self,
        *,
        repository: Repository,
        store: Store,
        forge: Forge,
        runners: Mapping[str, PipelineRunner],
        work_dir: Path,
        release_branch: str | None = None,
        max_active_runs: int = 2,
        clock: Clock,
        on_release: ReleaseHook | None = None,
        admit: Callable[[str, str], tuple[bool, str]] | None = None,
        heads: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.repository = repository
        self.store = store
        self.forge = forge
        self.runners = runners
        self.work_dir = work_dir
        self.release_branch = release_branch or repository.default_branch
        self.max_active_runs = max_active_runs
        self.clock = clock
        self.on_release = on_release
        self.admit = admit  # (branch, head) -> (may its code run, why); None admits every branch
        # the refs to train and their heads: the repository's branches, or more (a fork's pull/<n>/head)
        self.heads = heads or repository.branches
        self._held: set[tuple[str, str]] = set()  # (branch, head) told it waits for ok-to-test
        self._active: dict[int, _Active] = {}
        self._inputs: dict[tuple[str, str], RunInputs] = {}
        self._current_step: dict[int, str] = {}  # written by runner threads, read by progress()
        self.finished: list[Finished] = []

    # ------------------------------------------------------------- observe

    def reconcile(self) -> PassSummary:
        """One pass over every branch: plan each proposal head and apply the actions."""
        summary = PassSummary()
        branches = self.heads()
        main_head = branches.get(self.release_branch)
        if main_head is None:
            log.warning("release branch %r not found; nothing to compare proposals with", self.release_branch)
            return summary
        main_catalog = self.repository.catalog(main_head)
        for ref, head in sorted(branches.items()):
            if ref == self.release_branch:
                continue
            try:
                heads = self._observe(ref, head, main_head)
            except GitError as exc:
                log.error("cannot read proposal %s at %s: %s", ref, head[:10], exc)
                continue
            if self.admit is not None and heads:
                admitted, why = self.admit(ref, head)
                if not admitted:
                    self._hold(ref, head, heads, why)
                    continue
            heads = [replace(h, production=self._production_number(h, main_catalog)) for h in heads]
            actions = plan_proposal(ref=ref, commit=head, heads=heads, running_here=self._active.keys())
            self._apply(actions, main_catalog=main_catalog, summary=summary)
        if self.on_release is not None:
            self._reconcile_release(main_head, main_catalog, summary)
        gone = {a.ref for a in self._active.values()} - set(branches)
        for ref in sorted(gone):
            runs = [PriorRun(r.id, r.model, r.commit, r.cache_key, r.status) for r in self._runs_of(ref)]
            self._apply(plan_closed(ref=ref, runs=runs), main_catalog=main_catalog, summary=summary)
        return summary

    def _reconcile_release(self, main_head: str, main_catalog: Catalog, summary: PassSummary) -> None:
        """Every model on the release branch gets a version of its current content.

        A model whose content (cache key) has no run on the release branch yet
        gets one: the proposal's run when the keys are equal (what was
        reviewed is what ships), a new run otherwise. A judged release run
        without its version (the controller stopped in between) is handed to
        the release hook again.
        """
        heads: list[ModelHead] = []
        for name, model in sorted(main_catalog.models.items()):
            try:
                inputs = self._run_inputs(main_head, model)
            except (data_inputs.DataError, GitError) as exc:
                log.error("cannot plan %s on %s: %s", name, self.release_branch, exc)
                continue
            latest = self.store.latest_run(model=name, ref=self.release_branch)
            if latest is not None and latest.cache_key == inputs.cache_key:
                if latest.finished:
                    self._release_if_unregistered(latest, model)
                    continue
                if latest.id in self._active:
                    continue
                if latest.commit != main_head:  # resume it where it is: same content, older commit
                    self.store.update_run(latest.id, status="queued")
                    continue
            heads.append(self._head(model, inputs.cache_key, latest))
        if heads:
            actions = plan_proposal(
                ref=self.release_branch,
                commit=main_head,
                heads=heads,
                running_here=self._active.keys(),
                compare=False,
            )
            self._apply(actions, main_catalog=main_catalog, summary=summary)

    def _release_if_unregistered(self, run: Run, model: Model) -> None:
        if self.on_release is None or run.status != "succeeded":
            return
        if any(v.run_id == run.id for v in self.store.list_versions(run.model)):
            return
        if any(g.get("outcome") == "failed" for g in run.gates):
            return
        if not run.gates and model.gates:
            return  # not judged yet (stopped between finishing and judging): judged on the next collect
        self.on_release(run, model, "success")

    def retrain(self, model: str, ref: str | None = None) -> int:
        """Train ``model`` at the head of ``ref`` (default: the release branch) again, cache or not.

        A run of it still going on that ref is cancelled first. Returns the new run's id.
        """
        ref = ref or self.release_branch
        head = self.heads().get(ref)
        if head is None:
            raise ValueError(f"there is no branch {ref!r} to retrain {model} on")
        if self.admit is not None and ref != self.release_branch:
            admitted, why = self.admit(ref, head)
            if not admitted:  # a retrain is no way around ok-to-test (Invariant 2)
                raise ValueError(f"not retraining {model} on {ref}: {why}")
        spec = self.repository.catalog(head).models.get(model)
        if spec is None:
            raise ValueError(f"{model} is not a valid model at the head of {ref} ({head[:10]})")
        for active in list(self._active.values()):
            if active.ref == ref and active.model.name == model:
                self._cancel(CancelRun(active.run_id, model, "retrain requested"))
        inputs = self._run_inputs(head, spec)
        summary = PassSummary()
        self._apply(
            [StartRun(model, ref, head, inputs.cache_key)], main_catalog=self._main_catalog(), summary=summary
        )
        return summary.started[0]

    def changed_models(self, ref: str) -> list[str]:
        """The models whose specs or inputs the head of ``ref`` changes against the release branch."""
        heads = self.heads()
        head, main_head = heads.get(ref), heads.get(self.release_branch)
        if head is None or main_head is None:
            return []
        base = self.repository.merge_base(main_head, head)
        if base is None or base == head:
            return []
        changed = self.repository.changed_models(base, head)
        return sorted(changed.added | changed.modified)

    def _hold(self, ref: str, head: str, heads: list[ModelHead], why: str) -> None:
        """An untrusted head runs nothing (Invariant 2); say so once per head on each model's status."""
        if (ref, head) in self._held:
            return
        self._held.add((ref, head))
        log.info("not running %s at %s: %s", ref, head[:10], why)
        for item in heads:
            self.forge.set_status(ReviewTarget(ref, item.name, head), "pending", why[:140])
        self.store.append_audit(
            actor="flywheel",
            action="proposal.held",
            detail={"ref": ref, "commit": head, "reason": why, "models": [h.name for h in heads]},
        )

    def _runs_of(self, ref: str) -> list[Run]:
        return [self.store.get_run(a.run_id) for a in self._active.values() if a.ref == ref]

    def _observe(self, ref: str, head: str, main_head: str) -> list[ModelHead]:
        base = self.repository.merge_base(main_head, head)
        if base is None or base == head:
            return []
        changed = self.repository.changed_models(base, head)
        catalog = self.repository.catalog(head)
        heads: list[ModelHead] = []
        for name in sorted(changed.added | changed.modified):
            model = catalog.models.get(name)
            if model is None:
                continue
            latest = self.store.latest_run(model=name, ref=ref)
            try:
                inputs = self._run_inputs(head, model)
            except (data_inputs.DataError, GitError) as exc:
                error = SpecError(Location(model.spec_path), "spec.data", str(exc), "Model", name)
                heads.append(ModelHead(name, None, errors=(error,), latest=self._prior(latest)))
                continue
            heads.append(self._head(model, inputs.cache_key, latest))
        for spec_path in changed.invalid:
            name = _model_name_from_path(spec_path, catalog)
            errors = catalog.errors_for(spec_path)
            latest = self.store.latest_run(model=name, ref=ref)
            heads.append(ModelHead(name, None, errors=errors, latest=self._prior(latest)))
        return heads

    def _head(self, model: Model, cache_key: str, latest: Run | None) -> ModelHead:
        """A model to plan, with a successful run of the same key (whose artifact still exists) to reuse."""
        reusable = self.store.find_successful_run(cache_key)
        if reusable is not None and not _artifact_exists(reusable):
            reusable = None
        return ModelHead(
            model.name, model, cache_key=cache_key, latest=self._prior(latest), reusable=self._prior(reusable)
        )

    @staticmethod
    def _prior(run: Run | None) -> PriorRun | None:
        if run is None:
            return None
        return PriorRun(run.id, run.model, run.commit, run.cache_key, run.status, run.baseline_version)

    def _production_number(self, head: ModelHead, main_catalog: Catalog) -> int | None:
        if head.model is None:
            return None
        production = self._production_version(head.model, main_catalog)
        return production.number if production is not None else None

    def _run_inputs(self, commit: str, model: Model) -> RunInputs:
        cached = self._inputs.get((commit, model.name))
        if cached is not None:
            return cached
        pieces = self.repository.model_inputs(commit, model)
        if pieces.source_tree is None:
            raise GitError(f"source directory {model.source.path} does not exist at {commit[:10]}")
        requirements = self.repository.read_file(commit, model.source.requirements) or b""
        environment = environment_hash(
            requirements=requirements.decode("utf-8", "replace"), python=model.source.python
        )
        fingerprints = {}
        for data in model.data:
            path = data_inputs.local_path(data, base=Path(model.source.path))
            if path is not None and not data.uri.startswith("file:") and not data.digest:
                relative = (PurePosixPath(model.source.path) / data.uri).as_posix()
                tree = self.repository.tree_id(commit, os.path.normpath(relative))
                if tree is None:
                    raise data_inputs.DataError(f"data input {data.name!r}: {relative} does not exist")
                fingerprints[data.name] = f"git:{tree}"
            else:
                fingerprints[data.name] = data_inputs.resolve(data, base=self.work_dir).fingerprint
        inputs = RunInputs(
            model=model.name,
            source_tree=pieces.source_tree,
            requirements_blob=pieces.requirements_blob,
            params=dict(model.params),
            pipeline=pipeline_identity(model),
            data_fingerprints=fingerprints,
            environment_hash=environment,
        )
        self._inputs[(commit, model.name)] = inputs
        return inputs

    # --------------------------------------------------------------- apply

    def _apply(self, actions: list[Action], *, main_catalog: Catalog, summary: PassSummary) -> None:
        for action in actions:
            if isinstance(action, CancelRun):
                self._cancel(action)
                summary.cancelled.append(action.run_id)
            elif isinstance(action, ReportSpecErrors):
                self._report_spec_errors(action)
                summary.spec_errors.append(action.model)
            elif isinstance(action, ReuseRun):
                summary.reused.append(self._reuse(action, main_catalog))
            elif isinstance(action, StartRun):
                model = self.repository.catalog(action.commit).models[action.model]
                inputs = self._run_inputs(action.commit, model)
                run = self.store.create_run(
                    model=action.model,
                    ref=action.ref,
                    commit=action.commit,
                    cache_key=action.cache_key,
                    trigger=self._trigger(action.ref),
                    params=dict(model.params),
                    data_fingerprints=inputs.data_fingerprints,
                    environment_hash=inputs.environment_hash,
                )
                self._audit("run.queued", run, detail={"cache_key": run.cache_key})
                self._publish(
                    run, model, main_catalog, outcome="pending", summary_line="Queued for training."
                )
                self._set_status(run, "pending", "queued for training")
                summary.started.append(run.id)
            elif isinstance(action, ResumeRun):
                log.info("resuming run %s of %s on %s", action.run_id, action.model, action.ref)
                self.store.update_run(action.run_id, status="queued")
            elif isinstance(action, Rejudge):
                self._rejudge(action, main_catalog)
        self._launch_queued(main_catalog)

    def _launch_queued(self, main_catalog: Catalog) -> None:
        """Start queued runs of live proposal heads while there is room."""
        branches = self.heads()
        queued = [
            r for r in self.store.list_runs(status="queued", limit=1000) if r.trigger in TRAINING_TRIGGERS
        ]
        for run in sorted(queued, key=lambda r: r.id):
            if len(self._active) >= self.max_active_runs:
                return
            if run.id in self._active:
                continue
            if run.ref != self.release_branch and branches.get(run.ref) != run.commit:
                self.store.update_run(run.id, status="cancelled", error="the proposal moved on before it ran")
                continue
            model = self.repository.catalog(run.commit).models.get(run.model)
            if model is None:
                continue
            self._launch(run, model, main_catalog)

    def _launch(self, run: Run, model: Model, main_catalog: Catalog) -> None:
        environment = self._pipeline_environment(model, main_catalog)
        try:
            runner_name, runner = pipeline_runner(environment, self.runners)
        except MissingRunner as exc:
            self._fail_to_start(run, model, main_catalog, str(exc))
            return
        run_dir = self.work_dir / "runs" / str(run.id)
        source_dir = run_dir / "src"
        if source_dir.exists():  # a resumed run starts from a clean copy
            shutil.rmtree(run_dir, ignore_errors=True)
        self.repository.export_tree(run.commit, model.source.path, source_dir)
        data = {}
        for item in model.data:
            path = data_inputs.local_path(item, base=source_dir)
            data[item.name] = str(path) if path is not None else item.uri
        production = self._production_version(model, main_catalog)
        baseline_dir = Path(production.artifact_uri) if production is not None else None
        request = RunRequest(
            run_id=str(run.id),
            model=model,
            source_dir=source_dir,
            run_dir=run_dir,
            params=dict(model.params),
            data=data,
            baseline_model_dir=baseline_dir if baseline_dir is not None and baseline_dir.is_dir() else None,
            environment_hash=run.environment_hash,
            max_parallel=environment.max_parallel if environment is not None else 2,
            on_event=self._on_step_event,
        )
        log.info(
            "training %s on %s at %s (run %s)",
            model.name,
            run.ref,
            run.commit[:10],
            run.id,
            extra={"proposal": run.ref, "model": model.name, "run": run.id},
        )
        handle = runner.start(request)
        self._active[run.id] = _Active(run.id, model, run.ref, run.commit, handle, self.clock.monotonic())
        run = self.store.update_run(run.id, status="running", started_at=self._now())
        self._audit("run.started", run, detail={"cache_key": run.cache_key, "runner": runner_name})
        self._publish(run, model, main_catalog, outcome="running", summary_line="Training…")
        self._set_status(run, "pending", "training")

    def _fail_to_start(self, run: Run, model: Model, main_catalog: Catalog, why: str) -> None:
        """Record a run that cannot start as an error, report it and say so once, like a finished run."""
        run = self.store.update_run(run.id, status="error", error=why, finished_at=self._now())
        self._audit("run.finished", run, detail={"status": "error", "error": why})
        self._publish(run, model, main_catalog, outcome="error", summary_line=why)
        self._set_status(run, "error", why)
        log.error(
            "%s on %s: error — %s",
            model.name,
            run.ref,
            why,
            extra={"proposal": run.ref, "model": model.name, "run": run.id, "state": "error"},
        )
        self.finished.append(Finished(run.id, run.model, run.ref, "error", why))

    def _cancel(self, action: CancelRun) -> None:
        active = self._active.pop(action.run_id, None)
        if active is not None:
            active.handle.cancel()
        run = self.store.update_run(
            action.run_id, status="cancelled", error=action.reason, finished_at=self._now()
        )
        self._audit("run.cancelled", run, detail={"reason": action.reason})
        log.info("cancelled run %s of %s: %s", run.id, run.model, action.reason)
        self._set_status(run, "error", f"cancelled: {action.reason}")

    def _reuse(self, action: ReuseRun, main_catalog: Catalog) -> int:
        source = self.store.get_run(action.source_run)
        model = self.repository.catalog(action.commit).models[action.model]
        now = self._now()
        with self.store.transaction():
            run = self.store.create_run(
                model=action.model,
                ref=action.ref,
                commit=action.commit,
                cache_key=action.cache_key,
                trigger=self._trigger(action.ref),
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
                started_at=now,
                finished_at=now,
            )
            self._audit("run.reused", run, detail={"source_run": source.id, "cache_key": run.cache_key})
        log.info("cache hit for %s on %s: reusing run %s", model.name, action.ref, source.id)
        self._judge_and_report(run, model, main_catalog, result=None)
        return run.id

    def _report_spec_errors(self, action: ReportSpecErrors) -> None:
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
            run = self.store.update_run(run.id, error="\n".join(errors), finished_at=self._now())
            self._audit("run.spec_errors", run, detail={"errors": errors})
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

    # ------------------------------------------------------------- collect

    def collect(self) -> list[Finished]:
        """Judge and report every run that ended since the last call."""
        done: list[Finished] = []
        main_catalog: Catalog | None = None
        for run_id, active in list(self._active.items()):
            if not active.handle.done():
                continue
            del self._active[run_id]
            self._current_step.pop(run_id, None)
            result = active.handle.wait(0)
            if main_catalog is None:
                main_catalog = self._main_catalog()
            done.append(self._finish(active, result, main_catalog))
        if done and main_catalog is not None:
            self._launch_queued(main_catalog)
        self.finished.extend(done)
        return done

    @property
    def busy(self) -> bool:
        """Whether runs are going or waiting for room to start."""
        if self._active:
            return True
        return any(r.trigger in TRAINING_TRIGGERS for r in self.store.list_runs(status="queued", limit=1000))

    def progress(self) -> list[tuple[str, str, str, float]]:
        """(proposal, model, current step, elapsed seconds) of every active run."""
        now = self.clock.monotonic()
        return [
            (a.ref, a.model.name, self._current_step.get(a.run_id, ""), now - a.started)
            for a in self._active.values()
        ]

    def shutdown(self) -> None:
        """Cancel every active run (the controller is stopping); they are re-run on the next start."""
        for run_id, active in list(self._active.items()):
            active.handle.cancel()
            self.store.update_run(run_id, status="queued")
        self._active.clear()

    def _finish(self, active: _Active, result: RunResult, main_catalog: Catalog) -> Finished:
        if result.status == "cancelled":
            run = self.store.update_run(active.run_id, status="cancelled", finished_at=self._now())
            return Finished(run.id, run.model, run.ref, "error", "cancelled")
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
        digest = _digest_dir(model_dir) if model_dir is not None and result.status == "succeeded" else None
        run = self.store.update_run(
            active.run_id,
            status=result.status,
            steps=steps,
            metrics=dict(result.metrics),
            environment_hash=result.environment_hash or self.store.get_run(active.run_id).environment_hash,
            artifact_path=str(model_dir) if digest else None,
            artifact_digest=digest,
            finished_at=self._now(),
            error=result.error or None,
        )
        return self._judge_and_report(run, active.model, main_catalog, result=result)

    def _rejudge(self, action: Rejudge, main_catalog: Catalog) -> None:
        """Production moved on since this run was judged: judge its gates and report again, train nothing."""
        run = self.store.get_run(action.run_id)
        model = self.repository.catalog(action.commit).models.get(action.model)
        if model is None:
            return
        before = run.baseline_version
        log.info(
            "%s on %s: production is now %s (was %s); judging run %s again",
            action.model,
            action.ref,
            f"v{action.production}" if action.production else "nothing",
            f"v{before}" if before else "nothing",
            run.id,
        )
        self._judge_and_report(run, model, main_catalog, result=None, rejudged_from=(before,))

    def _judge_and_report(
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
        production = self._production_version(model, main_catalog)
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
            self._audit("run.rejudged", run, detail={**judged, "compared_before": rejudged_from[0]})
        else:
            self._audit("run.finished", run, detail=judged)
        outcome = {"success": "success", "failure": "failure", "error": "error", "pending": "running"}[state]
        self._publish(
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
        self._set_status(run, state, description)
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

    # ------------------------------------------------------------- reports

    def _publish(
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
        )
        if run.ref == self.release_branch:
            return
        self.forge.publish_report(ReviewTarget(run.ref, model.name, run.commit), render_report(report))

    def _trigger(self, ref: str) -> str:
        return RELEASE_TRIGGER if ref == self.release_branch else TRIGGER

    def _set_status(self, run: Run, state: CommitState, description: str) -> None:
        if run.ref == self.release_branch:
            return
        self.forge.set_status(ReviewTarget(run.ref, run.model, run.commit), state, description[:140])

    # ------------------------------------------------------------- helpers

    def _now(self) -> datetime:
        return self.clock.now()

    def _main_catalog(self) -> Catalog:
        return self.repository.catalog(self.repository.resolve(self.release_branch))

    def _pipeline_environment(self, model: Model, main_catalog: Catalog) -> Environment | None:
        """Proposals train where the model's first stage runs pipelines, as ``main`` defines it."""
        for stage in model.rollout.stages:
            environment = main_catalog.environments.get(stage.environment)
            if environment is not None:
                return environment
        return None

    def _production_version(self, model: Model, main_catalog: Catalog) -> ModelVersion | None:
        return production_version(self.store, model, main_catalog, at=self._now())

    def _on_step_event(self, event: StepEvent) -> None:
        if event.kind == "started":
            self._current_step[int(event.run_id)] = event.step
        active = self._active.get(int(event.run_id))
        where = {"run": event.run_id, "step": event.step, "attempt": event.attempt}
        if active is not None:
            where |= {"proposal": active.ref, "model": active.model.name}
        if event.kind == "started":
            log.info("step %s started (attempt %s)", event.step, event.attempt, extra=where)
        elif event.kind == "retrying":
            log.warning("step %s failed, retrying: %s", event.step, event.message, extra=where)
        else:
            log.info(
                "step %s %s in %.1fs%s",
                event.step,
                event.status,
                event.elapsed_seconds,
                f": {event.message}" if event.message else "",
                extra=where,
            )

    def _audit(self, action: str, run: Run, *, detail: dict[str, object]) -> None:
        self.store.append_audit(
            actor="flywheel",
            action=action,
            model=run.model,
            version=None,
            environment=None,
            detail={"run": run.id, "ref": run.ref, "commit": run.commit, **detail},
        )


class MissingRunner(LookupError):
    """An environment names a pipeline runner this controller does not have."""


def pipeline_runner(
    environment: Environment | None, runners: Mapping[str, PipelineRunner]
) -> tuple[str, PipelineRunner]:
    """(name, runner) of the runner ``environment`` names (``local`` without an environment).

    Raises :class:`MissingRunner`, naming the environment and the runner, when
    this controller has none by that name: a run never falls back to another.
    """
    name = environment.runner if environment is not None else "local"
    runner = runners.get(name)
    if runner is None:
        where = f"environment {environment.name!r}" if environment is not None else "the model"
        have = ", ".join(sorted(runners)) or "none"
        raise MissingRunner(
            f"{where} names pipeline runner {name!r}, which this controller does not have (it has: {have})"
        )
    return name, runner


def production_environment(model: Model, catalog: Catalog) -> str | None:
    """The environment whose serving version is the model's baseline: the one marked production."""
    for stage in model.rollout.stages:
        environment = catalog.environments.get(stage.environment)
        if environment is not None and environment.production:
            return environment.name
    return model.rollout.stages[-1].environment if model.rollout.stages else None


def production_version(store: Store, model: Model, catalog: Catalog, *, at: datetime) -> ModelVersion | None:
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


def _model_name_from_path(spec_path: str, catalog: Catalog) -> str:
    named = next((e.name for e in catalog.errors_for(spec_path) if e.name), "")
    if named:
        return named
    parts = PurePosixPath(spec_path).parts
    return parts[1] if len(parts) >= 3 and parts[0] == "specs" else spec_path


def _artifact_exists(run: Run) -> bool:
    return run.artifact_path is not None and Path(run.artifact_path).is_dir()


def _digest_dir(path: Path) -> str | None:
    """sha256 over the names and contents of the files under ``path``: the artifact digest."""
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def _label(version: int | None) -> str:
    return f"v{version}" if version is not None else "nothing"

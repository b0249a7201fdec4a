"""The proposal reconciler: train every change proposed to a model and report the result.

Called by the controller's main loop (``flywheel run``) once per poll. Each
pass observes the repository (branch heads, the models each proposal
changes, their cache keys, whether the trust gate admits each head) and the
store (earlier runs), asks the pure planner (:mod:`controller.engine.plan`)
what to do — for each proposal, for the release branch, and which queued
runs start now — and applies the actions through the backends: the pipeline
runner, the forge and the store. Runs go on in the background;
:meth:`ProposalReconciler.collect` picks up the ones that ended and hands
them to the :class:`~controller.engine.judging.Judge`, which judges their
gates against production and publishes the report.

Decisions use ``main``'s environments and policies, never the proposal's
(a proposal never judges itself); every run result goes to the audit log.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol, Unpack

from controller.backends import data as data_inputs
from controller.backends.forge import Forge, ReviewTarget
from controller.backends.git import GitError, Repository
from controller.backends.pipelines import (
    PipelineRunner,
    RunHandle,
    RunRequest,
    RunResult,
    StepEvent,
)
from controller.backends.store import ModelVersion, Run, RunQuery
from controller.clock import Clock
from controller.engine.identity import RunInputs
from controller.engine.judging import (
    RELEASE_TRIGGER,
    TRAINING_TRIGGERS,
    TRIGGER,
    Finished,
    Judge,
    JudgeRecords,
    ReleaseHook,
)
from controller.engine.plan import (
    Action,
    CancelRun,
    DropQueued,
    FailToStart,
    HoldHead,
    LaunchRun,
    ModelHead,
    PriorRun,
    QueuedRun,
    Rejudge,
    Release,
    ReportSpecErrors,
    ResumeRun,
    ReuseRun,
    StartRun,
    Trust,
    plan_closed,
    plan_launches,
    plan_proposal,
    plan_release,
)
from controller.engine.training import MissingRunner, pipeline_environment, pipeline_runner, read_run_inputs
from controller.specs.types import Catalog, Location, Model, SpecError

__all__ = ["PassSummary", "ProposalReconciler", "ProposalRecords"]

log = logging.getLogger("flywheel.proposals")


class ProposalRecords(JudgeRecords, Protocol):
    """What :class:`ProposalReconciler` reads and writes: earlier runs, versions, and its judge's records."""

    def latest_run(self, *, model: str, ref: str) -> Run | None: ...

    def find_successful_run(self, cache_key: str) -> Run | None: ...

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]: ...

    def list_versions(self, model: str) -> list[ModelVersion]: ...


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


class ProposalReconciler:
    """Plans and applies the training of proposals on one repository."""

    def __init__(
        self,
        *,
        repository: Repository,
        store: ProposalRecords,
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
        self.judge = Judge(
            store=store,
            forge=forge,
            work_dir=work_dir,
            release_branch=self.release_branch,
            clock=clock,
            on_release=on_release,
        )

    # ------------------------------------------------------------- observe

    def reconcile(self, refs: Collection[str] | None = None) -> PassSummary:
        """One pass over every branch (or ``refs`` only): plan each proposal head and apply the actions."""
        summary = PassSummary()
        branches = self.heads()
        main_head = branches.get(self.release_branch)
        if main_head is None:
            log.warning("release branch %r not found; nothing to compare proposals with", self.release_branch)
            return summary
        main_catalog = self.repository.catalog(main_head)
        for ref, head in sorted(branches.items()):
            if ref == self.release_branch or (refs is not None and ref not in refs):
                continue
            try:
                heads = self._observe(ref, head, main_head)
            except GitError as exc:
                log.error("cannot read proposal %s at %s: %s", ref, head[:10], exc)
                continue
            trust = self._trust(ref, head) if heads else None
            if trust is None or trust.admitted:
                heads = [replace(h, production=self._production_number(h, main_catalog)) for h in heads]
            actions = plan_proposal(
                ref=ref, commit=head, heads=heads, running_here=self._active.keys(), trust=trust
            )
            self._apply(actions, main_catalog=main_catalog, summary=summary)
        if self.on_release is not None and (refs is None or self.release_branch in refs):
            self._reconcile_release(main_head, main_catalog, summary)
        gone = {a.ref for a in self._active.values()} - set(branches)
        for ref in sorted(gone):
            runs = [PriorRun(r.id, r.model, r.commit, r.cache_key, r.status) for r in self._runs_of(ref)]
            self._apply(plan_closed(ref=ref, runs=runs), main_catalog=main_catalog, summary=summary)
        return summary

    def _reconcile_release(self, main_head: str, main_catalog: Catalog, summary: PassSummary) -> None:
        """Every model on the release branch gets a version of its content (see :func:`plan_release`)."""
        heads: list[ModelHead] = []
        for name, model in sorted(main_catalog.models.items()):
            try:
                inputs = self._run_inputs(main_head, model)
            except (data_inputs.DataError, GitError) as exc:
                log.error("cannot plan %s on %s: %s", name, self.release_branch, exc)
                continue
            latest = self.store.latest_run(model=name, ref=self.release_branch)
            heads.append(self._head(model, inputs.cache_key, latest))
        actions = plan_release(
            ref=self.release_branch, commit=main_head, heads=heads, running_here=self._active.keys()
        )
        if actions:
            self._apply(actions, main_catalog=main_catalog, summary=summary)

    def _trust(self, ref: str, head: str) -> Trust | None:
        """The trust gate's answer for a head (``None`` without a gate: every head runs)."""
        if self.admit is None:
            return None
        admitted, why = self.admit(ref, head)
        return Trust(admitted, why, told=(ref, head) in self._held)

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

    def _prior(self, run: Run | None) -> PriorRun | None:
        if run is None:
            return None
        registered = run.status == "succeeded" and any(
            v.run_id == run.id for v in self.store.list_versions(run.model)
        )
        return PriorRun(
            run.id,
            run.model,
            run.commit,
            run.cache_key,
            run.status,
            run.baseline_version,
            gates=tuple(str(g.get("outcome")) for g in run.gates),
            registered=registered,
        )

    def _production_number(self, head: ModelHead, main_catalog: Catalog) -> int | None:
        if head.model is None:
            return None
        production = self.judge.production_version(head.model, main_catalog)
        return production.number if production is not None else None

    # --------------------------------------------------------------- apply

    def _apply(self, actions: list[Action], *, main_catalog: Catalog, summary: PassSummary) -> None:
        for action in actions:
            self._perform(action, main_catalog=main_catalog, summary=summary)
        self._launch_queued(main_catalog)

    def _perform(self, action: Action, *, main_catalog: Catalog, summary: PassSummary) -> None:
        if isinstance(action, CancelRun):
            self._cancel(action)
            summary.cancelled.append(action.run_id)
        elif isinstance(action, ReportSpecErrors):
            self.judge.report_spec_errors(action)
            summary.spec_errors.append(action.model)
        elif isinstance(action, ReuseRun):
            summary.reused.append(self._reuse(action, main_catalog))
        elif isinstance(action, StartRun):
            summary.started.append(self._queue(action, main_catalog))
        elif isinstance(action, ResumeRun):
            log.info("resuming run %s of %s on %s", action.run_id, action.model, action.ref)
            self.store.update_run(action.run_id, status="queued")
        elif isinstance(action, Rejudge):
            self._rejudge(action, main_catalog)
        elif isinstance(action, HoldHead):
            self._hold(action)
        elif isinstance(action, Release):
            if self.on_release is not None:
                run = self.store.get_run(action.run_id)
                self.on_release(run, main_catalog.models[action.model], "success")
        elif isinstance(action, DropQueued):
            self.store.update_run(action.run_id, status="cancelled", error=action.reason)
        elif isinstance(action, FailToStart | LaunchRun):
            run = self.store.get_run(action.run_id)
            model = self.repository.catalog(run.commit).models[run.model]
            if isinstance(action, FailToStart):
                self._fail_to_start(run, model, main_catalog, action.reason)
            else:
                self._launch(run, model, main_catalog)

    def _queue(self, action: StartRun, main_catalog: Catalog) -> int:
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
        self.judge.audit("run.queued", run, detail={"cache_key": run.cache_key})
        self.judge.publish(run, model, main_catalog, outcome="pending", summary_line="Queued for training.")
        self.judge.set_status(run, "pending", "queued for training")
        return run.id

    def _hold(self, action: HoldHead) -> None:
        """An untrusted head runs nothing (Invariant 2); its models' statuses say why."""
        self._held.add((action.ref, action.commit))
        log.info("not running %s at %s: %s", action.ref, action.commit[:10], action.reason)
        for model in action.models:
            target = ReviewTarget(action.ref, model, action.commit)
            self.forge.set_status(target, "pending", action.reason[:140])
        self.store.append_audit(
            actor="flywheel",
            action="proposal.held",
            detail={
                "ref": action.ref,
                "commit": action.commit,
                "reason": action.reason,
                "models": list(action.models),
            },
        )

    def _launch_queued(self, main_catalog: Catalog) -> None:
        """Start queued runs of live proposal heads while there is room (see :func:`plan_launches`)."""
        queued = [
            self._queued(run, main_catalog)
            for run in self.store.list_runs(status="queued", limit=1000)
            if run.trigger in TRAINING_TRIGGERS
        ]
        actions = plan_launches(
            queued=queued,
            heads=self.heads(),
            release_branch=self.release_branch,
            running=self._active.keys(),
            limit=self.max_active_runs,
        )
        for action in actions:
            self._perform(action, main_catalog=main_catalog, summary=PassSummary())

    def _queued(self, run: Run, main_catalog: Catalog) -> QueuedRun:
        model = self.repository.catalog(run.commit).models.get(run.model)
        error = None
        if model is not None:
            try:
                pipeline_runner(pipeline_environment(model, main_catalog), self.runners)
            except MissingRunner as exc:
                error = str(exc)
        return QueuedRun(run.id, run.model, run.ref, run.commit, found=model is not None, runner_error=error)

    def _launch(self, run: Run, model: Model, main_catalog: Catalog) -> None:
        environment = pipeline_environment(model, main_catalog)
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
        production = self.judge.production_version(model, main_catalog)
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
            environment=environment,
            cache_key=run.cache_key,
            commit=run.commit,
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
        self.judge.audit("run.started", run, detail={"cache_key": run.cache_key, "runner": runner_name})
        self.judge.publish(run, model, main_catalog, outcome="running", summary_line="Training…")
        self.judge.set_status(run, "pending", "training")

    def _fail_to_start(self, run: Run, model: Model, main_catalog: Catalog, why: str) -> None:
        self.finished.append(self.judge.fail_to_start(run, model, main_catalog, why))

    def _reuse(self, action: ReuseRun, main_catalog: Catalog) -> int:
        model = self.repository.catalog(action.commit).models[action.model]
        source = self.store.get_run(action.source_run)
        run = self.judge.record_reuse(action, source, trigger=self._trigger(action.ref))
        log.info("cache hit for %s on %s: reusing run %s", model.name, action.ref, source.id)
        self.judge.judge_and_report(run, model, main_catalog, result=None)
        return run.id

    def _finish(self, active: _Active, result: RunResult, main_catalog: Catalog) -> Finished:
        run = self.judge.record_result(active.run_id, result)
        if result.status == "cancelled":
            return Finished(run.id, run.model, run.ref, "error", "cancelled")
        return self.judge.judge_and_report(run, active.model, main_catalog, result=result)

    def _run_inputs(self, commit: str, model: Model) -> RunInputs:
        cached = self._inputs.get((commit, model.name))
        if cached is None:
            cached = read_run_inputs(self.repository, commit, model, work_dir=self.work_dir)
            self._inputs[(commit, model.name)] = cached
        return cached

    def _cancel(self, action: CancelRun) -> None:
        active = self._active.pop(action.run_id, None)
        if active is not None:
            active.handle.cancel()
        run = self.store.update_run(
            action.run_id, status="cancelled", error=action.reason, finished_at=self._now()
        )
        self.judge.audit("run.cancelled", run, detail={"reason": action.reason})
        log.info("cancelled run %s of %s: %s", run.id, run.model, action.reason)
        self.judge.set_status(run, "error", f"cancelled: {action.reason}")

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
        self.judge.judge_and_report(run, model, main_catalog, result=None, rejudged_from=(before,))

    def _trigger(self, ref: str) -> str:
        return RELEASE_TRIGGER if ref == self.release_branch else TRIGGER

    # ------------------------------------------------------------- helpers

    def _now(self) -> datetime:
        return self.clock.now()

    def _main_catalog(self) -> Catalog:
        return self.repository.catalog(self.repository.resolve(self.release_branch))

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


def _model_name_from_path(spec_path: str, catalog: Catalog) -> str:
    named = next((e.name for e in catalog.errors_for(spec_path) if e.name), "")
    if named:
        return named
    parts = PurePosixPath(spec_path).parts
    return parts[1] if len(parts) >= 3 and parts[0] == "specs" else spec_path


def _artifact_exists(run: Run) -> bool:
    return run.artifact_path is not None and Path(run.artifact_path).is_dir()

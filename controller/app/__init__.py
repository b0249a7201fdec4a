"""The composition root: builds the backends the settings and the specs name, and runs the controller loop.

``flywheel run`` and ``flywheel serve`` call :func:`run_controller` with the
:class:`~controller.settings.Settings` they loaded; ``flywheel demo`` builds a
:class:`Controller` with :func:`build_controller` and drives it itself. This
is the one place that chooses implementations: the embedded home's local
runner and local serving, the local forge or GitHub (when the settings name a
repository there), the console notifier and Slack (with a bot token), the
SQLite store; and, per environment, the pipeline runner, the serving backend
(:class:`ServingByName`) and the metrics source its spec names. The engine
only sees their interfaces. It also wires the inbox's one consumer
(:class:`~controller.engine.inbox.InboxDispatcher`): the handler of each kind
of event, whoever queued it (the webhook service, the poller, a command).
A pull request, push or ``ok-to-test`` reconciles the proposals it names at
once (:meth:`Controller.reconcile_requested`); every proposal is reconciled
again every ``--interval``.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Protocol

from controller.app.parts import cluster_images, trigger_engine
from controller.app.serving import ServingByName
from controller.backends.forge import Forge
from controller.backends.forge.github import GitHubForge, GitHubSender
from controller.backends.forge.github_poll import GitHubPoller
from controller.backends.forge.local import LocalForge
from controller.backends.git import GitError, Repository
from controller.backends.images import ImageBuilder
from controller.backends.local.venvs import VenvCache
from controller.backends.metrics import MetricsSource
from controller.backends.metrics.builtin import BuiltinMetrics
from controller.backends.metrics.prometheus import PrometheusMetrics
from controller.backends.notify.buttons import SLACK_ACTION_KIND
from controller.backends.notify.console import JOURNAL_NAME, ConsoleNotifier, NotificationJournal
from controller.backends.pipelines import PipelineRunner
from controller.backends.pipelines.local import LocalRunner
from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import ServedVersion, ServingBackend
from controller.backends.serving.drift_source import ServedDrift
from controller.backends.serving.local import LocalServing
from controller.backends.store import InboxEvent, ModelVersion, Run, open_store
from controller.backends.store.integrity import verify_state
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK, Clock
from controller.cluster_serving import drift_logging, kserve_backends, revision_lookup
from controller.engine.commands import ROLLBACK_EVENT, Commands, Watched, record_watched, repository_location
from controller.engine.github_events import GITHUB_EVENT_KINDS, GitHubEvents
from controller.engine.inbox import Handler, InboxDispatcher
from controller.engine.notices import NotifierSender
from controller.engine.observed import ServingWatch
from controller.engine.outbox import Sender, deliver_due
from controller.engine.proposals import PassSummary, ProposalReconciler
from controller.engine.pull_requests import PullRequestTargets
from controller.engine.release import Registrar
from controller.engine.rollout import RolloutEngine, label
from controller.engine.slack_actions import SlackActions
from controller.engine.triggers import TriggerEngine, admitting_retrains
from controller.engine.trust import TrustGate, proposal_heads
from controller.settings import ControllerSettings, Settings, SettingsError, argo_token
from controller.specs.types import Catalog, Environment, Model

log = logging.getLogger("flywheel.controller")

__all__ = ["Controller", "Poller", "ServingByName", "build_controller", "run_controller"]

RETRAIN_EVENT = "retrain"  # queued by an earlier Flywheel for /flywheel retrain (a comment now starts it)


class Poller(Protocol):
    """Reads a service for what its webhooks may have missed and queues it in the inbox."""

    def poll_if_due(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class Controller:
    store: SqlStore
    repository: Repository
    proposals: ProposalReconciler
    rollouts: RolloutEngine
    serving: ServingBackend
    inbox: InboxDispatcher  # the inbox's one consumer: a handler per kind of event
    senders: dict[str, Sender] = field(default_factory=dict)
    commands: Commands | None = None
    forge: Forge | None = None
    requested: set[str] = field(default_factory=set)  # refs the inbox's events named: reconcile them now
    pollers: list[Poller] = field(default_factory=list)  # the fallback for missed webhook deliveries
    clock: Clock = SYSTEM_CLOCK  # the one clock of everything above
    watch: ServingWatch | None = None  # compares what serves with the store, at start and every tick
    triggers: TriggerEngine | None = None  # schedules and new data: retrain proposals
    closers: list[Callable[[], object]] = field(default_factory=list)  # clients to close with the controller
    last_turn: datetime | None = None  # when the loop last turned, by the clock (for /healthz)
    leading: Callable[[], bool] = lambda: True  # False: a follower, whose loop idles (engine/leadership.py)
    # part of tick -> the error it last failed with, so a failure that repeats is logged once
    _failing: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def main_catalog(self) -> Catalog:
        return self.repository.catalog(self.repository.resolve(self.proposals.release_branch))

    def tick(self) -> None:
        """Poll for missed deliveries, handle the inbox, compare what serves with the store (the
        first tick is the start's), advance rollouts, deliver the outbox.

        A part that raises is logged and the others still run: one bad event,
        stored value or poller never stops the loop.
        """
        for poller in self.pollers:
            self._guarded(f"poller {type(poller).__name__}", poller.poll_if_due)
        self._guarded("inbox", self.handle_requests)
        if self.triggers is not None:
            self._guarded("triggers", self.fire_triggers)
        if self.watch is not None:
            self._guarded("serving watch", self.watch.tick)
        self._guarded("rollouts", self.rollouts.tick)
        self._guarded("outbox", self.deliver)
        self._guarded("store checkpoint", self.store.checkpoint)  # a lost log file costs one tick at most

    def fire_triggers(self) -> None:
        """Evaluate the triggers (:class:`TriggerEngine`); the retrain branches they propose are reconciled
        at once."""
        assert self.triggers is not None
        self.requested |= self.triggers.tick()

    def deliver(self) -> None:
        """Send the outbox's due messages through the registered senders."""
        deliver_due(self.store, self.senders, now=self.clock.now())

    def _guarded(self, part: str, call: Callable[[], object]) -> None:
        """Run ``call``; an exception is logged with its traceback once while it repeats, never raised."""
        try:
            call()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if self._failing.get(part) == failure:
                log.debug("%s still failing: %s", part, failure)
            else:
                log.exception("%s failed; the controller goes on", part)
            self._failing[part] = failure
        else:
            if self._failing.pop(part, None) is not None:
                log.info("%s works again", part)

    def handle_requests(self) -> None:
        """Handle the inbox's events in order (:meth:`InboxDispatcher.handle_due`); one that fails is
        recorded with its error and skipped. The refs they name are reconciled by
        :meth:`reconcile_requested`.
        """
        self.requested |= self.inbox.handle_due()

    def reconcile_requested(self) -> PassSummary | None:
        """Fetch, and reconcile the proposals the inbox's events named, only those; ``None`` when none."""
        refs, self.requested = self.requested, set()
        if not refs:
            return None
        self.repository.fetch()
        return self.proposals.reconcile(refs)

    def close(self) -> None:
        for poller in self.pollers:
            poller.close()
        self.proposals.shutdown()  # runs in flight may still build images or read data versions
        for close in self.closers:
            close()
        self.store.close()


def build_controller(
    settings: Settings,
    *,
    serving: ServingBackend | None = None,
    senders: Mapping[str, Sender] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    images: ImageBuilder | None = None,
) -> Controller:
    """The controller the settings describe; ``clock`` is handed to every part that reads the time.

    ``serving`` replaces the local serving backend (tests pass a fake).
    ``images`` builds models' images for the cluster home (tests pass a
    fake); without it, a release branch with an environment whose pipelines
    run on Argo gets BuildKit builds in the cluster (:func:`~controller.app.parts.cluster_images`).
    Either way the controller then has the ``argo`` pipeline runner.
    """
    options = settings.controller
    state_dir = options.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.database_url or state_dir, clock=clock)
    try:
        verify_state(store)  # writable, intact, audit log not behind its mark: else one line, nothing done
    except BaseException:
        store.close()
        raise
    repository = Repository.open(options.repo, mirror_root=state_dir / "mirrors")
    venvs = VenvCache(settings.local.venv_dir or state_dir / "venvs")
    # the backends this controller has, by the name an environment gives; an environment naming
    # another one gets an error saying so (proposals.pipeline_runner, ServingByName), never a stand-in
    runners: dict[str, PipelineRunner] = {"local": LocalRunner(venvs=venvs)}
    serving_backends: dict[str, ServingBackend] = {
        "local": serving or LocalServing(state_dir / "serving", venvs=venvs, clock=clock),
    }
    release_branch = options.release_branch or repository.default_branch
    if release_branch not in repository.branches():
        repository.fetch()  # a mirror made before the branch was pushed
    if release_branch not in repository.branches():
        known = ", ".join(sorted(repository.branches())) or "none"
        raise GitError(f"{options.repo} has no branch {release_branch!r} to release from (it has: {known})")
    release_catalog = repository.catalog(repository.resolve(release_branch))
    try:
        serving_backends.update(kserve_backends(release_catalog, settings.argo, clock=clock))
    except SettingsError:
        store.close()
        raise
    serving_backend = ServingByName(serving_backends)
    closing: list[Callable[[], object]] = []
    if images is None:
        images = cluster_images(release_catalog, settings, state_dir, clock, store, closing)
    from controller.backends.pipelines.argo import ArgoRunner  # one runner: each run names its Argo Server

    runners["argo"] = ArgoRunner(
        images=images,
        repository=repository_location(options.repo),
        token=lambda spec: argo_token(variable=spec.token_env, file=spec.token_file),
        settings=settings.argo,
    )
    watching = Watched(repository=repository_location(options.repo), release_branch=release_branch)
    record_watched(store, watching)

    def main_catalog() -> Catalog:
        return repository.catalog(repository.resolve(release_branch))

    builtin = BuiltinMetrics(
        lambda name: serving_backend.router_metrics_url(main_catalog().environments[name]),
        clock=clock.monotonic,
    )
    prometheus: dict[str, PrometheusMetrics] = {}

    def metrics_for(environment: Environment) -> MetricsSource:
        if environment.metrics_source == "prometheus" and environment.prometheus_url:
            if environment.prometheus_url not in prometheus:
                prometheus[environment.prometheus_url] = PrometheusMetrics(
                    environment.prometheus_url, revisions=revision_lookup(serving_backends, main_catalog)
                )
            return prometheus[environment.prometheus_url]
        return builtin

    def served_version(version: ModelVersion, model: Model) -> ServedVersion:
        requirements = repository.read_file(version.commit, model.source.requirements) or b""
        source_dir = None
        if model.serving.runtime == "custom":
            source_dir = state_dir / "versions" / model.name / label(version.number) / "src"
            if not source_dir.is_dir():
                repository.export_tree(version.commit, model.source.path, source_dir)
        return ServedVersion(
            model=model.name,
            version=label(version.number),
            serving=model.serving,
            artifact_uri=version.artifact_uri,
            environment=PythonEnvironment(
                requirements=requirements.decode("utf-8", "replace"), python=model.source.python
            ),
            source_uri=str(source_dir) if source_dir is not None else None,
            image=version.image,
        )

    watch = ServingWatch(
        rollouts=store,
        audit=store,
        outbox=store,
        transactions=store,
        serving=serving_backend,
        catalog=main_catalog,
        clock=clock,
    )
    rollouts = RolloutEngine(
        rollouts=store,
        approvals=store,
        registry=store,
        audit=store,
        outbox=store,
        transactions=store,
        serving=serving_backend,
        metrics=metrics_for,
        catalog=main_catalog,
        served_version=served_version,
        clock=clock,
        discrepancies=watch.holding,
    )

    def author_of(run: Run) -> str | None:
        source = store.get_run(run.reused_from) if run.reused_from is not None else run
        try:
            return repository.commit_author(source.commit)
        except GitError:
            return None

    registrar = Registrar(store=store, rollouts=rollouts, catalog=main_catalog, author_of=author_of)
    forge: Forge = LocalForge(store)
    reviews: Forge = forge
    admit = None
    heads = None
    pollers: list[Poller] = []
    if settings.github is not None:
        forge = GitHubForge(store, settings.github.repository)
        reviews = PullRequestTargets(forge, store)  # each report and check names its pull request
        admit = admitting_retrains(store, TrustGate(store, main_catalog).admits)
        heads = functools.partial(proposal_heads, repository, store)
        if settings.github.poll_seconds > 0:
            pollers.append(GitHubPoller.from_settings(store, settings.github, pulls=store, clock=clock))
    proposals = ProposalReconciler(
        repository=repository,
        store=store,
        forge=reviews,
        admit=admit,
        heads=heads,
        runners=runners,
        work_dir=state_dir,
        release_branch=release_branch,
        max_active_runs=options.max_active_runs,
        on_release=registrar.release if options.promote else None,
        clock=clock,
    )
    console = ConsoleNotifier(journal=NotificationJournal(state_dir / JOURNAL_NAME))
    all_senders: dict[str, Sender] = {"console": NotifierSender(console, announced=console.announced)}
    if settings.slack is not None:
        from controller.backends.notify.slack import SLACK_API_URL, SlackSender

        all_senders["slack"] = SlackSender(
            token=settings.slack.token, store=store, base_url=settings.slack.api_url or SLACK_API_URL
        )
    if settings.github is not None:
        all_senders["github"] = GitHubSender.from_settings(store, settings.github, clock=clock)
    all_senders.update(senders or {})
    commands = Commands(store=store, catalog=main_catalog, clock=clock)
    triggers, closers = trigger_engine(settings, repository, store, main_catalog, release_branch, clock)
    triggers.drift = drift = ServedDrift.with_cluster(serving_backends, state_dir / "drift", clock=clock)
    drift_logging(serving_backends, settings.drift_logger, drift.cluster)
    return Controller(
        store=store,
        repository=repository,
        proposals=proposals,
        rollouts=rollouts,
        serving=serving_backend,
        inbox=InboxDispatcher(
            store, _handlers(store, proposals, rollouts, commands, forge=forge, catalog=main_catalog)
            | drift.handlers()
        ),
        senders=all_senders,
        commands=commands,
        forge=forge,
        pollers=pollers,
        clock=clock,
        watch=watch,
        triggers=triggers,
        closers=[*closing, *closers, drift.save],
    )


def _handlers(
    store: SqlStore,
    proposals: ProposalReconciler,
    rollouts: RolloutEngine,
    commands: Commands,
    *,
    forge: Forge,
    catalog: Callable[[], Catalog],
) -> dict[str, Handler]:
    """The handler of each kind of inbox event (see :mod:`controller.engine.inbox`)."""
    watched = forge if isinstance(forge, GitHubForge) else None

    def replies(repository: str) -> GitHubForge:
        """The watched repository's forge answers comments; else the forge of the event's repository."""
        return watched or GitHubForge(store, repository)

    github = GitHubEvents(
        pulls=store,
        records=store,
        catalog=catalog,
        commands=commands,
        replies=replies,
        retrain=proposals.retrain,
        changed_models=lambda pull: proposals.changed_models(pull.ref),
    )

    def retrain(event: InboxEvent) -> None:
        ref = event.payload.get("ref")
        proposals.retrain(str(event.payload["model"]), str(ref) if ref else None)

    return {
        **dict.fromkeys(GITHUB_EVENT_KINDS, github),
        SLACK_ACTION_KIND: SlackActions(commands=commands, outbox=store, inbox=store, transactions=store),
        ROLLBACK_EVENT: lambda event: rollouts.handle_rollback_request(event.payload),
        RETRAIN_EVENT: retrain,
    }


def run_controller(settings: Settings, *, once: bool = False, controller: Controller | None = None) -> int:
    """Poll and reconcile until stopped (or, with ``once``, until the work of one pass is done).

    With ``once`` the exit code is 0 when every run this pass started or
    reused passed, 1 otherwise (a gate failed, a step crashed, a spec is bad).
    Rollouts are advanced only by a controller that keeps running.
    """
    controller = controller or build_controller(settings)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping (signal %s); runs and rollouts resume on the next start", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _loop(controller, settings.controller, stop=stop, once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        controller.close()


def _loop(controller: Controller, settings: ControllerSettings, *, stop: threading.Event, once: bool) -> int:
    proposals = controller.proposals
    log.info("watching %s (state in %s)", settings.repo, settings.state_dir)
    summary = None
    last_poll = 0.0
    last_tick = 0.0
    last_progress = time.monotonic()
    while not stop.is_set():
        controller.last_turn = controller.clock.now()
        if not controller.leading():
            stop.wait(0.2)
            continue
        now = time.monotonic()
        if summary is None or (not once and now - last_poll >= settings.interval_seconds):
            controller.requested.clear()  # every proposal is reconciled now
            controller.repository.fetch()
            summary = proposals.reconcile()
            last_poll = now
        elif not once:
            controller.reconcile_requested()
        proposals.collect()
        if not once and now - last_tick >= settings.tick_seconds:
            controller.tick()
            last_tick = now
        if once and not proposals.busy:
            controller.deliver()
            break
        if time.monotonic() - last_progress >= settings.progress_every_seconds:
            for ref, model, step, elapsed in proposals.progress():
                log.info(
                    "still training: step %s, %.0fs so far",
                    step or "(environment)",
                    elapsed,
                    extra={"proposal": ref, "model": model},
                )
            last_progress = time.monotonic()
        stop.wait(0.2)
    if not once:
        return 0
    if summary is not None and summary.spec_errors:
        return 1
    if any(f.state != "success" for f in proposals.finished):
        return 1
    # Runs that never reached the finished list: failed to start (no runner, no environment) or were
    # cache hits whose gates failed. Every run of this pass must have succeeded and passed its gates.
    ran = (summary.started + summary.reused) if summary is not None else []
    return 0 if all(_passed(controller.store.get_run(run_id)) for run_id in ran) else 1


def _passed(run: Run) -> bool:
    return run.status == "succeeded" and not any(g.get("outcome") == "failed" for g in run.gates)

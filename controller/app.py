"""The composition root: builds the backends the configuration names and runs the controller loop.

``flywheel run`` calls :func:`run_controller`. This is the one place that
chooses implementations (the embedded home's local runner, local forge and
SQLite store); the engine only sees their interfaces.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from controller.backends.forge.local import LocalForge
from controller.backends.git import Repository
from controller.backends.pipelines import PipelineRunner
from controller.backends.pipelines.local import LocalRunner
from controller.backends.pipelines.venvs import VenvCache
from controller.backends.store import Store, open_store
from controller.engine.proposals import ProposalReconciler

log = logging.getLogger("flywheel.controller")


@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    repo: str
    state_dir: Path = Path(".flywheel")
    interval_seconds: float = 5.0
    max_active_runs: int = 2
    release_branch: str | None = None
    venv_dir: Path | None = None  # default: <state_dir>/venvs
    progress_every_seconds: float = 10.0


@dataclass
class Controller:
    store: Store
    repository: Repository
    proposals: ProposalReconciler

    def close(self) -> None:
        self.proposals.shutdown()
        self.store.close()


def build_controller(settings: ControllerSettings) -> Controller:
    state_dir = settings.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(state_dir)
    repository = Repository.open(settings.repo, mirror_root=state_dir / "mirrors")
    venvs = VenvCache(settings.venv_dir or state_dir / "venvs")
    runners: dict[str, PipelineRunner] = {"local": LocalRunner(venvs=venvs)}
    proposals = ProposalReconciler(
        repository=repository,
        store=store,
        forge=LocalForge(store),
        runners=runners,
        work_dir=state_dir,
        release_branch=settings.release_branch,
        max_active_runs=settings.max_active_runs,
    )
    return Controller(store=store, repository=repository, proposals=proposals)


def run_controller(settings: ControllerSettings, *, once: bool = False) -> int:
    """Poll and reconcile until stopped (or, with ``once``, until the work of one pass is done).

    With ``once`` the exit code is 0 when every run this pass started or
    reused passed, 1 otherwise (a gate failed, a step crashed, a spec is bad).
    """
    controller = build_controller(settings)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping (signal %s); active runs will resume on the next start", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _loop(controller, settings, stop=stop, once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        controller.close()


def _loop(controller: Controller, settings: ControllerSettings, *, stop: threading.Event, once: bool) -> int:
    proposals = controller.proposals
    log.info("watching %s (state in %s)", settings.repo, settings.state_dir)
    summary = None
    last_poll = 0.0
    last_progress = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if summary is None or (not once and now - last_poll >= settings.interval_seconds):
            controller.repository.fetch()
            summary = proposals.reconcile()
            last_poll = now
        proposals.collect()
        if once and not proposals.busy:
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
    bad = [f for f in proposals.finished if f.state != "success"]
    if summary is not None and summary.spec_errors:
        return 1
    return 1 if bad else 0

"""The rollout engine on KServe: canary steps by canaryTrafficPercent, analysed by a real Prometheus.

The stand-in KServe serves real traffic (a model server per revision behind
its weighted router) and a real ``/usr/bin/prometheus`` scrapes its
queue-proxy metrics; the engine's analysis reads them through the built-in
checks' PromQL. Pins down: a good version goes through its canary steps
(the InferenceService's ``canaryTrafficPercent`` at each step's weight) and
is promoted (the percentage removed, all traffic on it); a canary failing
on part of its inputs is rolled back on its own from Prometheus's figures,
the previous version restored with all traffic; with Prometheus down the
canary holds and is never promoted. Skipped without Prometheus (failed in CI).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.backends.metrics.prometheus import PrometheusMetrics, Revision
from controller.backends.serving import ServedVersion
from controller.backends.serving.kserve_status import read_service
from controller.backends.store import ModelVersion, RolloutRecord, open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.rollout import RolloutEngine
from controller.engine.rollout_state import load_state
from controller.specs.types import (
    Analysis,
    AnalysisCheck,
    CanaryStep,
    Catalog,
    Model,
    Rollout,
    Serving,
    Source,
    Stage,
)
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster
from tests.fixtures.required import program
from tests.test_metrics_prometheus import PrometheusServer

pytestmark = pytest.mark.integration
MODEL = Model(
    name="iris",
    spec_path="specs/iris/model.yaml",
    source=Source(path="specs/iris", requirements="specs/iris/requirements.txt"),
    serving=Serving(runtime="custom", command="serve", sample_inputs=((5.1, 3.5, 1.4, 0.2),)),
    rollout=Rollout(
        stages=(
            Stage(
                "staging",
                canary=(
                    CanaryStep(weight=25, duration_seconds=6.0),
                    CanaryStep(weight=50, duration_seconds=6.0),
                ),
            ),
        ),
        analysis=Analysis(
            interval_seconds=4.0,
            failure_limit=2,
            checks=(
                AnalysisCheck("success-rate", builtin="successRate", min=0.95),
                AnalysisCheck("enough-traffic", builtin="requestCount", min=3),
                AnalysisCheck("p99", builtin="latency", percentile=99, max=5.0),
            ),
        ),
    ),
)
GOOD, BAD = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]  # a partly failing canary fails on BAD


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    program("prometheus")
    with kserve_cluster(tmp_path) as started:
        yield started


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[PrometheusServer]:
    (tmp_path / "prometheus").mkdir()
    server = PrometheusServer(tmp_path / "prometheus", scrape_target=cluster.kserve.metrics_target)
    try:
        server.wait_until('up{job="flywheel"} == 1', seconds=60)
        yield server
    finally:
        server.stop()


def engine(cluster: Cluster, store: SqlStore, prometheus_url: str, *, bad: set[int]) -> RolloutEngine:
    def served(version: ModelVersion, model: Model) -> ServedVersion:
        return cluster.version(f"v{version.number}", fail="partial" if version.number in bad else "")

    def revision(environment: str, model: str, version: str) -> Revision | None:
        name = cluster.backend.revision(environment=ENV, model=model, version=version)
        if name is None:
            raise LookupError(f"no KServe revision of {model} {version} is known in {environment}")
        return Revision(namespace="ml-serving", name=name)

    metrics = PrometheusMetrics(prometheus_url, revisions=revision, timeout=2.0)
    catalog = Catalog(models={"iris": MODEL}, environments={"staging": ENV})
    return RolloutEngine(
        rollouts=store,
        approvals=store,
        registry=store,
        audit=store,
        outbox=store,
        transactions=store,
        serving=cluster.backend,
        metrics=lambda env: metrics,
        catalog=lambda: catalog,
        served_version=served,
        clock=SYSTEM_CLOCK,
    )


def register(store: SqlStore, n: int) -> ModelVersion:
    run = store.create_run(
        model="iris", ref="main", commit=f"{n:040d}", cache_key=f"k{n}", status="succeeded"
    )
    return store.register_version(
        model="iris",
        run_id=run.id,
        commit=run.commit,
        artifact_digest=f"d{n}",
        artifact_uri="/",
        environment_hash="e",
    )


def until(
    rollouts: RolloutEngine,
    store: SqlStore,
    version: int,
    done: Callable[[RolloutRecord], bool],
    seconds: float = 120,
) -> RolloutRecord:
    limit = time.monotonic() + seconds
    while True:
        rollouts.tick()
        rollout = next(r for r in store.rollouts_for("iris") if r.version == version)
        if done(rollout) or time.monotonic() > limit:
            return rollout
        time.sleep(0.2)


class Traffic:
    """Requests through the InferenceService's URL while the block runs: good, good, bad, over and over."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.percents: list[int | None] = []  # canaryTrafficPercent as each request saw it

    def _send(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                for row in (GOOD, GOOD, BAD):
                    with contextlib.suppress(httpx.HTTPError):  # a cut-off request: the rest counts
                        self.cluster.infer(http, row)
                self.percents.append(read_service(self.cluster.service()).canary_percent)
                self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_canary_steps_promote_a_good_version_and_a_partly_failing_one_rolls_back(
    cluster: Cluster, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    rollouts = engine(cluster, store, prometheus.url, bad={3})
    try:
        rollouts.start(register(store, 1), MODEL)
        first = until(rollouts, store, 1, lambda r: r.finished_at is not None)
        assert first.state == "succeeded", load_state(first)
        with Traffic(cluster) as traffic:
            rollouts.start(register(store, 2), MODEL)
            second = until(rollouts, store, 2, lambda r: r.finished_at is not None)
            assert second.state == "succeeded", load_state(second)
            assert {25, 50} <= set(traffic.percents)  # each step's weight reached KServe
            service = read_service(cluster.service())
            assert service.version == "v2" and service.canary_percent is None
            assert {v: w for v, w in service.routes().items() if w} == {"v2": 100}

            rollouts.start(register(store, 3), MODEL)
            third = until(rollouts, store, 3, lambda r: r.finished_at is not None)
        assert third.state == "rolled_back", load_state(third)
        outcome = load_state(third).outcome
        assert outcome is not None and "success-rate" in outcome.reason
        service = read_service(cluster.service())
        assert service.version == "v2" and service.canary_percent is None
        assert {v: w for v, w in service.routes().items() if w} == {"v2": 100}
        assert set(cluster.answered_by(3)) == {service.latest_ready}
        assert any(e.action == "rollout.rolled_back" for e in store.audit(model="iris"))
    finally:
        store.close()


def test_with_prometheus_down_a_canary_holds_and_is_never_promoted(
    cluster: Cluster, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    rollouts = engine(cluster, store, prometheus.url, bad=set())
    try:
        rollouts.start(register(store, 1), MODEL)
        assert until(rollouts, store, 1, lambda r: r.finished_at is not None).state == "succeeded"
        prometheus.stop()
        with Traffic(cluster):
            rollouts.start(register(store, 2), MODEL)
            held = until(rollouts, store, 2, lambda r: r.finished_at is not None, seconds=25)
        assert held.finished_at is None and held.state == "canary", load_state(held)
        assert load_state(held).step_index == 0  # never past the first step
        service = read_service(cluster.service())
        assert service.canary_percent == 25 and service.version == "v2"
    finally:
        store.close()

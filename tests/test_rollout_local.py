"""The rollout engine on real local serving: routers, model server processes, the router's metrics.

Pins down, with the built-in analysis reading the router's own ``/metrics``:
a canary whose model fails on part of its inputs is rolled back on its own
while the stable version keeps (and then takes all) the traffic, and the bad
version's server is stopped; a canary that gets no traffic holds as
inconclusive and never promotes.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.backends.metrics.builtin import BuiltinMetrics
from controller.backends.serving import ServedVersion, inference_request
from controller.backends.serving.local import LocalServing
from controller.backends.serving.server import free_port
from controller.backends.store import ModelVersion, RolloutRecord, Store, open_store
from controller.clock import SYSTEM_CLOCK
from controller.engine.rollout import RolloutEngine
from controller.specs.types import (
    Analysis,
    AnalysisCheck,
    CanaryStep,
    Catalog,
    Environment,
    Model,
    Rollout,
    Serving,
    Source,
    Stage,
)
from tests.test_serving import stub_version

ENV = Environment(
    name="production", spec_path="environments/production.yaml", production=True, port=free_port()
)
MODEL = Model(
    name="m",
    spec_path="specs/m/model.yaml",
    source=Source(path="specs/m", requirements="specs/m/requirements.txt"),
    serving=Serving(runtime="custom", command="serve", sample_inputs=((5.1, 3.5, 1.4, 0.2),)),
    rollout=Rollout(
        stages=(Stage("production", canary=(CanaryStep(weight=50, duration_seconds=2.0),)),),
        analysis=Analysis(
            interval_seconds=1.0,
            failure_limit=2,
            checks=(
                AnalysisCheck("success-rate", builtin="successRate", min=0.95),
                AnalysisCheck("enough-traffic", builtin="requestCount", min=5),
            ),
        ),
    ),
)
CATALOG = Catalog(models={"m": MODEL}, environments={"production": ENV})
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[LocalServing]:
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20)
    try:
        yield backend
    finally:
        backend.shutdown()


def _engine(store: Store, serving: LocalServing, tmp_path: Path, *, bad: set[int]) -> RolloutEngine:
    def served(version: ModelVersion, model: Model) -> ServedVersion:
        knobs = "STUB_FAIL=partial" if version.number in bad else ""
        return stub_version(tmp_path, f"v{version.number}", model=model.name, knobs=knobs)

    metrics = BuiltinMetrics(lambda name: serving.metrics_url(environment=ENV))
    return RolloutEngine(
        store=store,
        serving=serving,
        metrics=lambda env: metrics,
        catalog=lambda: CATALOG,
        served_version=served,
        clock=SYSTEM_CLOCK,
    )


def _register(store: Store, n: int) -> ModelVersion:
    run = store.create_run(model="m", ref="main", commit=f"{n:040d}", cache_key=f"k{n}", status="succeeded")
    return store.register_version(
        model="m",
        run_id=run.id,
        commit=run.commit,
        artifact_digest=f"d{n}",
        artifact_uri="/",
        environment_hash="e",
    )


def _until(
    engine: RolloutEngine, store: Store, version: int, done: Callable[[RolloutRecord], bool]
) -> RolloutRecord:
    limit = time.monotonic() + 60
    while time.monotonic() < limit:
        engine.tick()
        rollout = next(r for r in store.rollouts_for("m") if r.version == version)
        if done(rollout):
            return rollout
        time.sleep(0.2)
    raise AssertionError(f"rollout of v{version} stuck: {rollout}")


def _send(url: str, row: list[float]) -> tuple[int, str]:
    body = json.dumps(inference_request([row])).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("x-flywheel-version", "")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("x-flywheel-version", "")


def _with_v1_in_production(store: Store, engine: RolloutEngine) -> None:
    engine.start(_register(store, 1), MODEL)
    _until(engine, store, 1, lambda r: r.state == "succeeded")


def test_canary_failing_on_part_of_its_inputs_rolls_back_by_itself(
    serving: LocalServing, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    engine = _engine(store, serving, tmp_path, bad={2})
    _with_v1_in_production(store, engine)
    engine.start(_register(store, 2), MODEL)  # its smoke input (5.1, ...) passes; 6.7 fails
    url = serving.endpoint(environment=ENV, model="m") + "/infer"
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def traffic() -> None:
        while not stop.is_set():
            for row in ROWS:
                answers.append(_send(url, row))
            stop.wait(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        rollout = _until(engine, store, 2, lambda r: r.finished_at is not None)
    finally:
        stop.set()
        thread.join(10)
    assert rollout.state == "rolled_back", rollout.detail
    assert rollout.analysis_failures == 2 and "success-rate" in rollout.detail["reason"]
    assert {status for status, version in answers if version == "v1"} == {200}  # stable kept serving
    assert any(status == 500 for status, version in answers if version == "v2")
    assert [_send(url, ROWS[1]) for _ in range(20)] == [(200, "v1")] * 20  # all traffic back on v1
    assert [d.version for d in serving.deployed(environment=ENV, model="m")] == ["v1"]
    assert any(e.action == "rollout.rolled_back" for e in store.audit(model="m"))
    store.close()


def test_canary_without_traffic_holds_and_never_promotes(serving: LocalServing, tmp_path: Path) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    engine = _engine(store, serving, tmp_path, bad=set())
    _with_v1_in_production(store, engine)
    engine.start(_register(store, 2), MODEL)
    deadline = time.monotonic() + 6  # three times the step's duration, six analysis intervals
    while time.monotonic() < deadline:
        engine.tick()
        time.sleep(0.2)
    rollout = next(r for r in store.rollouts_for("m") if r.version == 2)
    assert (rollout.state, rollout.weight, rollout.analysis_failures) == ("canary", 50, 0)
    assert rollout.detail["last_decision"]["action"] == "hold"
    assert (
        "no requests" in rollout.detail["last_decision"]["reason"]
        or "only 0" in rollout.detail["last_decision"]["reason"]
    )
    events = [m.key for m in store.due_messages(limit=100)]
    assert sum("analysis_inconclusive" in key for key in events) == 1
    store.close()

"""The rollout engine on real local serving: routers, model server processes, the router's metrics.

Pins down, with the built-in analysis reading the router's own ``/metrics``:
a canary whose model fails on part of its inputs is rolled back on its own
while the stable version keeps (and then takes all) the traffic, and the bad
version's server is stopped; a canary that gets no traffic holds as
inconclusive and never promotes.

And ports: a rollout whose environment's port is held by another process
fails with that reason (the port and the holder), audited and announced once,
without a traceback; a serving error that repeats every tick (the router's
port taken while the rollout waits to promote) is logged once, and the
rollout goes on once the port is free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.backends.local.processes import is_alive
from controller.backends.metrics.builtin import BuiltinMetrics
from controller.backends.serving import ServedVersion, inference_request
from controller.backends.serving.local import LocalServing
from controller.backends.serving.server import ProcessRecord, free_port
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
    Environment,
    Model,
    Rollout,
    Serving,
    Source,
    Stage,
)
from tests.test_serving import stub_version

pytestmark = pytest.mark.integration
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
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _engine(
    store: SqlStore, serving: LocalServing, tmp_path: Path, *, bad: set[int], environment: Environment = ENV
) -> RolloutEngine:
    def served(version: ModelVersion, model: Model) -> ServedVersion:
        knobs = "STUB_FAIL=partial" if version.number in bad else ""
        return stub_version(tmp_path, f"v{version.number}", model=model.name, knobs=knobs)

    metrics = BuiltinMetrics(lambda name: serving.metrics_url(environment=environment))
    catalog = Catalog(models={"m": MODEL}, environments={"production": environment})
    return RolloutEngine(
        rollouts=store,
        approvals=store,
        registry=store,
        audit=store,
        outbox=store,
        transactions=store,
        serving=serving,
        metrics=lambda env: metrics,
        catalog=lambda: catalog,
        served_version=served,
        clock=SYSTEM_CLOCK,
    )


@contextlib.contextmanager
def _port_held(port: int = 0) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Another application listening on ``port`` (0: a free one) for the block: the port and its process."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with proc.stdout:
            yield int(proc.stdout.readline()), proc
    finally:
        proc.kill()
        proc.wait(10)


def _register(store: SqlStore, n: int) -> ModelVersion:
    run = store.create_run(model="m", ref="main", commit=f"{n:040d}", cache_key=f"k{n}", status="succeeded")
    return store.register_version(
        model="m",
        run_id=run.id,
        commit=run.commit,
        artifact_digest=f"d{n}",
        artifact_uri="/",
        environment_hash="e",
    )


def _reason(rollout: RolloutRecord) -> str:
    outcome = load_state(rollout).outcome
    return outcome.reason if outcome is not None else ""


def _until(
    engine: RolloutEngine, store: SqlStore, version: int, done: Callable[[RolloutRecord], bool]
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


def _with_v1_in_production(store: SqlStore, engine: RolloutEngine) -> None:
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
        # Two good rows to one bad: the router's smooth round robin sends every other request to the
        # canary, which must see both kinds whatever the phase (good, bad alternately would give it only one).
        while not stop.is_set():
            for row in (ROWS[0], ROWS[0], ROWS[1]):
                answers.append(_send(url, row))
            stop.wait(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        rollout = _until(engine, store, 2, lambda r: r.finished_at is not None)
    finally:
        stop.set()
        thread.join(10)
    assert rollout.state == "rolled_back", load_state(rollout)
    assert rollout.analysis_failures == 2 and "success-rate" in _reason(rollout)
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
    last = load_state(rollout).last_round
    assert last is not None and last.decision.action == "hold"
    assert "no requests" in last.decision.reason or "only 0" in last.decision.reason
    events = [m.key for m in store.due_messages(limit=100)]
    assert sum("analysis_inconclusive" in key for key in events) == 1
    store.close()


def test_a_deploy_on_a_port_held_by_another_process_fails_once_with_that_reason(
    serving: LocalServing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    with _port_held() as (port, holder):
        env = Environment(name="production", spec_path="environments/production.yaml", port=port)
        engine = _engine(store, serving, tmp_path, bad=set(), environment=env)
        engine.start(_register(store, 1), MODEL)
        with caplog.at_level(logging.DEBUG):
            rollout = _until(engine, store, 1, lambda r: r.finished_at is not None)
            for _ in range(3):
                engine.tick()
    assert rollout.state == "failed"
    reason = _reason(rollout)
    assert f"port {port} is held by pid {holder.pid}" in reason and "\n" not in reason
    failed = [e for e in store.audit(model="m") if e.action == "rollout.failed"]
    assert [e.detail["reason"] for e in failed] == [reason]
    keys = [m.key for m in store.due_messages(limit=100)]
    assert [key for key in keys if ":rolled_back" in key] == ["console:m:v1:production:rolled_back:-"]
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert sum(f"port {port}" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING) == 1
    assert serving.deployed(environment=env, model="m") == ()
    store.close()


def test_a_serving_error_repeating_every_tick_is_logged_once(
    serving: LocalServing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    port = free_port()
    env = Environment(name="production", spec_path="environments/production.yaml", port=port)
    engine = _engine(store, serving, tmp_path, bad=set(), environment=env)
    engine.start(_register(store, 1), MODEL)
    engine.tick()  # deployed: first deployment, so on to the gate
    assert store.rollouts_for("m")[0].state == "gate"
    router = ProcessRecord.load(tmp_path / "serving" / "production" / "router.json")
    assert router is not None and router.pid is not None
    os.kill(router.pid, signal.SIGKILL)  # the router dies, and another application takes its port
    while is_alive(router.pid, router.process_start):
        time.sleep(0.02)
    with _port_held(port) as (_, holder), caplog.at_level(logging.DEBUG, logger="flywheel.rollout"):
        for _ in range(5):
            engine.tick()
        assert store.rollouts_for("m")[0].state == "promote"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and not errors[0].exc_info  # one line, no traceback
        assert f"port {port} is held by pid {holder.pid}" in errors[0].getMessage()
        assert sum("(again)" in r.getMessage() for r in caplog.records) == 3
    rollout = _until(engine, store, 1, lambda r: r.finished_at is not None)  # the port is free again
    assert rollout.state == "succeeded"
    assert serving.endpoint(environment=env, model="m") == f"http://127.0.0.1:{port}/v2/models/m"
    store.close()

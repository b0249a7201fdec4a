"""Drift of a served model on the embedded home, through the real router and ``flywheel drift``.

Pinned down here, with a version whose artifact carries a reference profile
(built as the judge builds it, from what ``flywheel_reference`` wrote) and a
stub OIP server that predicts ``1`` when a row's first value is positive:

* traffic from a shifted distribution (feature ``b`` moved by one standard
  deviation) drives ``b``'s ``flywheel_drift_*`` gauges over the threshold on
  the router's ``/metrics``, its predictions do not drift (``a`` is not
  shifted), and ``flywheel drift`` (table and ``--json``) names ``b`` as drifted;
* the same amount of traffic from the training distribution drifts nothing:
  every feature is ``stable`` with PSI far below the warning band and
  p-values far above their threshold;
* too little traffic is ``not enough data`` (the drifted gauge is NaN), never
  "no drift";
* a version without a reference profile, or with one the router cannot
  read, is served unwatched (the deploy goes on), and ``flywheel drift`` says so.

Fixed seeds; the assertions keep wide margins from the thresholds.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from controller.backends.serving import ServedVersion
from controller.backends.serving.local import LocalServing
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.drift import build_profile
from controller.drift.profile import write_profile
from controller.specs.types import DriftMonitoring, Environment, Serving
from controller.steplib import flywheel_reference
from tests.test_serving import Client, scrape, series

pytestmark = pytest.mark.integration

ENV = Environment(name="staging", spec_path="environments/staging.yaml")
FEATURES = ["a", "b", "c", "d"]
SETTINGS = DriftMonitoring(min_samples=300, sample_size=2000)

PREDICTING_SERVER = r'''
import os
from aiohttp import web

name = os.environ["FLYWHEEL_MODEL_NAME"]

async def ok(request):
    return web.json_response({})

async def infer(request):
    (tensor,) = (await request.json())["inputs"]
    n, k = tensor["shape"]
    rows = [tensor["data"][i * k:(i + 1) * k] for i in range(n)]
    data = [int(row[0] > 0) for row in rows]
    return web.json_response({"model_name": name, "outputs": [
        {"name": "predict", "shape": [n], "datatype": "INT64", "data": data}]})

app = web.Application()
app.router.add_get("/v2/health/ready", ok)
app.router.add_get("/v2/health/live", ok)
app.router.add_get("/v2/models/{name}/ready", ok)
app.router.add_post("/v2/models/{name}/infer", infer)
web.run_app(app, host="127.0.0.1", port=int(os.environ["FLYWHEEL_PORT"]), print=None, access_log=None)
'''


def _version(tmp_path: Path, label: str, *, reference: bool = True) -> ServedVersion:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "serve.py").write_text(PREDICTING_SERVER)
    artifact = tmp_path / "artifacts" / label
    artifact.mkdir(parents=True)
    if reference:
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(4000, len(FEATURES)))
        data = flywheel_reference.write(
            rows, FEATURES, predictions=(rows[:, 0] > 0).astype(int), path=tmp_path / f"{label}.csv"
        )
        assert data is not None
        write_profile(build_profile(data), artifact)  # what the judge does with FLYWHEEL_REFERENCE_DATA
    command = f"{shlex.quote(sys.executable)} serve.py"
    return ServedVersion(
        model="m", version=label, artifact_uri=str(artifact), source_uri=str(source),
        serving=Serving(runtime="custom", command=command, drift=SETTINGS),
    )


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Client]:
    """Version v1 of ``m`` (with its reference) deployed and getting all traffic in staging."""
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    try:
        backend.deploy(environment=ENV, version=_version(tmp_path, "v1"))
        backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
        port = int(backend.endpoint(environment=ENV, model="m").split(":")[2].split("/")[0])
        client = Client(port)
        try:
            yield client
        finally:
            client.close()
    finally:
        backend.shutdown()


def _send(client: Client, rows: np.ndarray, batch: int = 20) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        body = {"inputs": [{"name": "x", "shape": list(chunk.shape), "datatype": "FP64",
                            "data": chunk.ravel().tolist()}]}
        status, _ = client.infer("m", json.dumps(body).encode())
        assert status == 200


def _gauge(samples: dict[str, float], name: str, feature: str, **extra: str) -> float:
    labels = {"environment": "staging", "model": "m", "version": "v1", "feature": feature, **extra}
    return samples[series(name, **labels)]


def _drift_cli(tmp_path: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["drift", "m", "--env", "staging", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_shifted_inputs_drive_the_gauges_over_the_threshold(routed: Client, tmp_path: Path) -> None:
    rows = np.random.default_rng(1).normal(size=(1200, len(FEATURES)))
    rows[:, 1] += 1.0
    _send(routed, rows)
    samples = scrape(routed)
    assert _gauge(samples, "flywheel_drift_samples", "b") == 1200
    assert _gauge(samples, "flywheel_drift_drifted", "b") == 1
    assert _gauge(samples, "flywheel_drift_psi", "b") > 2 * SETTINGS.psi_alert
    threshold = _gauge(samples, "flywheel_drift_p_value_threshold", "b")
    assert threshold == pytest.approx(SETTINGS.p_value / 5)  # four features and the predictions
    assert _gauge(samples, "flywheel_drift_p_value", "b", test="ks") < threshold / 1000
    for feature in ("a", "c", "d", "__prediction__"):
        assert _gauge(samples, "flywheel_drift_drifted", feature) == 0, feature

    table = _drift_cli(tmp_path)
    assert "drifted: b\n" in table
    document = json.loads(_drift_cli(tmp_path, "--json"))
    (version,) = document[0]["versions"]
    statuses = {row["feature"]: row["status"] for row in version["features"]}
    assert statuses["b"] == "drift"
    assert [f for f, s in statuses.items() if s == "drift"] == ["b"]


def test_inputs_from_the_training_distribution_drift_nothing(routed: Client, tmp_path: Path) -> None:
    _send(routed, np.random.default_rng(2).normal(size=(1200, len(FEATURES))))
    samples = scrape(routed)
    for feature in (*FEATURES, "__prediction__"):
        assert _gauge(samples, "flywheel_drift_drifted", feature) == 0, feature
        assert _gauge(samples, "flywheel_drift_psi", feature) < SETTINGS.psi_warn / 2, feature
    threshold = SETTINGS.p_value / 5
    for feature in FEATURES:
        assert _gauge(samples, "flywheel_drift_p_value", feature, test="ks") > 5 * threshold, feature
    table = _drift_cli(tmp_path)
    assert "drifted:" not in table
    assert table.count("stable") == 5


def test_too_little_traffic_is_not_enough_data(routed: Client, tmp_path: Path) -> None:
    _send(routed, np.random.default_rng(3).normal(size=(40, len(FEATURES))) + 3.0)
    samples = scrape(routed)
    assert _gauge(samples, "flywheel_drift_samples", "a") == 40
    assert math.isnan(_gauge(samples, "flywheel_drift_drifted", "a"))
    assert series("flywheel_drift_psi", environment="staging", feature="a", model="m", version="v1") \
        not in samples
    assert _drift_cli(tmp_path).count("not enough data") == 5


def test_a_version_without_a_reference_is_not_watched(tmp_path: Path) -> None:
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    try:
        backend.deploy(environment=ENV, version=_version(tmp_path, "v1", reference=False))
        backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
        assert "has no version watched for drift" in _drift_cli(tmp_path)
    finally:
        backend.shutdown()
    result = CliRunner().invoke(main, ["drift", "other", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "other is not served anywhere" in result.output


def test_a_profile_the_router_cannot_read_leaves_the_version_served_unwatched(tmp_path: Path) -> None:
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    try:
        version = _version(tmp_path, "v1", reference=False)
        (Path(version.artifact_uri) / "flywheel-reference-profile.json").write_text("{not json")
        backend.deploy(environment=ENV, version=version)
        backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
        assert "has no version watched for drift" in _drift_cli(tmp_path)
    finally:
        backend.shutdown()

"""Drift starts a retrain on the embedded home: real router, real git, the controller ``flywheel run`` builds.

The scaffolded iris model gets ``triggers.drift: true`` (and ``serving.drift``
with a small window); its version ``v1``, whose artifact carries a reference
profile built as the judge builds it, serves all of production through the
local serving backend's router (a stub OIP server predicts). Pins down the
issue's done-when:

* production inputs from a shifted distribution (``sepal_width`` moved by
  one standard deviation) drive its ``flywheel_drift_*`` gauges over the
  threshold, ``flywheel drift`` names it as drifted, and the controller's
  next tick commits a retrain on ``flywheel/retrain/iris`` whose message, the
  ``trigger.fired`` entry and the branch proposal's report carry the drift
  table; ``flywheel triggers`` shows the open episode; more ticks while the
  drift lasts propose nothing more;
* the same traffic from the training distribution drifts nothing, and no
  retrain branch appears.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from controller.app import Controller, build_controller
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving import ServedVersion
from controller.backends.serving.local import LocalServing
from controller.cli import main
from controller.clock import SYSTEM_CLOCK, FakeClock
from controller.drift import build_profile
from controller.drift.profile import write_profile
from controller.engine.trigger_plan import DRIFT_ANNOTATION, RETRAIN_ANNOTATION
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, Settings
from controller.specs.types import DriftMonitoring, Environment, Serving
from controller.steplib import flywheel_reference
from tests.gitrepo import GitRepo
from tests.test_drift_serving import PREDICTING_SERVER
from tests.test_serving import Client, scrape, series

pytestmark = pytest.mark.e2e

BRANCH = "flywheel/retrain/iris"
SPEC = "specs/iris/model.yaml"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETTINGS = DriftMonitoring(min_samples=300, sample_size=2000, sustained_windows=1)
PRODUCTION = Environment(name="production", spec_path="environments/production.yaml")
CHECK = 60.0


@dataclass
class Home:
    repo: GitRepo
    controller: Controller
    clock: FakeClock
    client: Client
    state: Path


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    repo.edit(
        SPEC,
        "  serving:\n    runtime: sklearn\n",
        "  serving:\n    runtime: sklearn\n    drift:\n      minSamples: 300\n      sampleSize: 2000\n"
        "      sustainedWindows: 1\n",
    )
    repo.write(SPEC, repo.read(SPEC) + "  triggers:\n    drift: true\n")
    repo.commit("iris: retrain when production drifts")
    state = tmp_path / "state"
    serving = LocalServing(state / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    clock = FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo.path), state_dir=state, promote=False,
                                               data_check_seconds=CHECK)),
        serving=serving,
        clock=clock,
    )
    controller.proposals.runners = {
        "local": FakeRunner(
            {"evaluate": ScriptedStep(metrics={"accuracy": 0.97, "f1_macro": 0.96, "log_loss": 0.1})}
        )
    }
    try:
        serving.deploy(environment=PRODUCTION, version=_version(tmp_path))
        serving.set_weights(environment=PRODUCTION, model="iris", weights={"v1": 100})
        port = int(serving.endpoint(environment=PRODUCTION, model="iris").split(":")[2].split("/")[0])
        client = Client(port)
        try:
            yield Home(repo, controller, clock, client, state)
        finally:
            client.close()
    finally:
        controller.close()
        serving.shutdown()


def _version(tmp_path: Path) -> ServedVersion:
    """v1 of iris: a stub server, and a reference profile of standard normal inputs."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "serve.py").write_text(PREDICTING_SERVER)
    artifact = tmp_path / "artifacts" / "v1"
    artifact.mkdir(parents=True)
    rows = np.random.default_rng(0).normal(size=(4000, len(FEATURES)))
    data = flywheel_reference.write(rows, FEATURES, predictions=(rows[:, 0] > 0).astype(int),
                                    path=tmp_path / "reference.csv")
    assert data is not None
    write_profile(build_profile(data), artifact)
    return ServedVersion(
        model="iris", version="v1", artifact_uri=str(artifact), source_uri=str(source),
        serving=Serving(runtime="custom", command=f"{shlex.quote(sys.executable)} serve.py", drift=SETTINGS),
    )


def _send(client: Client, rows: np.ndarray, batch: int = 25) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        body = {"inputs": [{"name": "x", "shape": list(chunk.shape), "datatype": "FP64",
                            "data": chunk.ravel().tolist()}]}
        status, _ = client.infer("iris", json.dumps(body).encode())
        assert status == 200


def _turn(home: Home) -> None:
    """Time passes; one tick; the branches it asked for are reconciled and their runs finish."""
    home.clock.advance(CHECK)
    home.controller.tick()
    home.controller.reconcile_requested()
    while home.controller.proposals.busy:
        home.controller.proposals.collect()


def _cli(home: Home, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--state-dir", str(home.state)])
    assert result.exit_code == 0, result.output
    return result.output


def test_shifted_production_inputs_start_one_retrain_carrying_the_drift_table(home: Home) -> None:
    rows = np.random.default_rng(1).normal(size=(1000, len(FEATURES)))
    rows[:, 1] += 1.0
    _send(home.client, rows)
    samples = scrape(home.client)
    labels = {"environment": "production", "model": "iris", "version": "v1"}
    assert samples[series("flywheel_drift_drifted", **labels, feature="sepal_width")] == 1
    assert samples[series("flywheel_drift_psi", **labels, feature="sepal_width")] > 2 * SETTINGS.psi_alert
    assert "drifted: sepal_width\n" in _cli(home, "drift", "iris", "--env", "production")

    _turn(home)
    assert home.repo.git("rev-list", "--count", f"main..{BRANCH}") == "1"
    message = home.repo.git("log", "-1", "--format=%B", BRANCH)
    assert message.startswith("Retrain iris: drift in production (sepal_width)\n")
    table_row = next(line for line in message.splitlines() if line.startswith("| sepal_width |"))
    assert "| drift | 1/1 |" in table_row
    assert "| sepal_length | numeric | 1000 |" in message and "| stable |" in message
    spec = yaml.safe_load(home.repo.git("show", f"{BRANCH}:{SPEC}"))
    annotations = spec["metadata"]["annotations"]
    assert annotations[RETRAIN_ANNOTATION] == "drift of v1 in production: sepal_width"
    assert annotations[DRIFT_ANNOTATION] == home.clock.now().isoformat()

    (fired,) = home.controller.store.audit(model="iris", actions=("trigger.fired",))
    assert fired.detail["drifted"] == ["sepal_width"] and fired.detail["version"] == "v1"
    report = _cli(home, "review", "show", BRANCH)
    assert "Why this retrain" in report and table_row in report

    head = home.repo.git("rev-parse", BRANCH)
    _send(home.client, rows)  # the drift lasts: the episode already proposed its retrain
    _turn(home)
    _turn(home)
    assert home.repo.git("rev-parse", BRANCH) == head
    assert len(home.controller.store.audit(model="iris", actions=("trigger.fired",))) == 1
    triggers = _cli(home, "triggers", "iris", "--repo", str(home.repo.path))
    assert "after the episode of v1" in triggers
    assert "Retrain iris: drift in production (sepal_width) → branch flywheel/retrain/iris" in triggers


def test_the_same_traffic_from_the_training_distribution_starts_nothing(home: Home) -> None:
    _send(home.client, np.random.default_rng(2).normal(size=(1000, len(FEATURES))))
    samples = scrape(home.client)
    for feature in (*FEATURES, "__prediction__"):
        labels = {"environment": "production", "model": "iris", "version": "v1", "feature": feature}
        assert samples[series("flywheel_drift_drifted", **labels)] == 0, feature
    assert "drifted:" not in _cli(home, "drift", "iris", "--env", "production")
    _turn(home)
    _turn(home)
    assert home.repo.git("branch", "--list", BRANCH) == ""
    assert [e.action for e in home.controller.store.audit(model="iris")
            if e.action.startswith("trigger.")] == ["trigger.armed"]

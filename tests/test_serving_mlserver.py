"""specs/iris served by the real MLServer through the router (slow).

Pinned down: the iris train step's artifact (``model.joblib`` +
``model-settings.json``) is served unchanged by MLServer from the model's own
environment extended with the pinned MLServer packages (built by VenvCache and
cached across runs under ``$FLYWHEEL_VENV_CACHE`` or ``~/.cache/flywheel/venvs``),
under the Flywheel model name and version; the router answers an OIP v2
inference for the spec's sample inputs with one prediction per input, and
counts it; the README's ``curl`` example, run as printed, gets a prediction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from controller import steplib
from controller.backends.local.venvs import VenvCache
from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import ServedVersion
from controller.backends.serving.local import LocalServing
from controller.clock import SYSTEM_CLOCK
from controller.settings import default_venv_cache
from controller.specs.types import Environment, Serving
from tests.test_serving_cli import readme_curl

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "specs" / "iris"


def _train_iris(tmp_path: Path) -> Path:
    """Run the iris train step with the step contract; the artifact directory."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps(yaml.safe_load((IRIS / "model.yaml").read_text())["spec"]["params"]))
    model_dir, workdir = tmp_path / "model", tmp_path / "work"
    workdir.mkdir()
    env = {
        **os.environ,
        "FLYWHEEL_PARAMS": str(params),
        "FLYWHEEL_WORKDIR": str(workdir),
        "FLYWHEEL_MODEL_DIR": str(model_dir),
        "FLYWHEEL_METRICS": str(tmp_path / "metrics.json"),
        "FLYWHEEL_DATA_IRIS": "sklearn://iris",
        "PYTHONPATH": str(Path(steplib.__file__).parent),  # flywheel_reference, as the runners give it
    }
    subprocess.run([sys.executable, "train.py"], cwd=IRIS, env=env, check=True, capture_output=True)
    return model_dir


@pytest.mark.timeout(1200)
def test_iris_is_served_by_mlserver_through_the_router(tmp_path: Path) -> None:
    artifact = _train_iris(tmp_path)
    settings_before = (artifact / "model-settings.json").read_text()
    spec = yaml.safe_load((IRIS / "model.yaml").read_text())["spec"]
    samples = [list(map(float, row)) for row in spec["serving"]["sampleInputs"]]
    version = ServedVersion(
        model="iris",
        version="v1",
        artifact_uri=str(artifact),
        serving=Serving(runtime="sklearn", sample_inputs=tuple(tuple(row) for row in samples)),
        environment=PythonEnvironment(
            requirements=(IRIS / "requirements.txt").read_text(), python=spec["source"]["python"]
        ),
    )
    environment = Environment(name="staging", spec_path="environments/staging.yaml")
    venvs = VenvCache(default_venv_cache())
    serving = LocalServing(tmp_path / "serving", venvs=venvs, ready_timeout_seconds=180, clock=SYSTEM_CLOCK)
    try:
        serving.deploy(environment=environment, version=version)
        serving.deploy(environment=environment, version=version)  # idempotent
        (server,) = serving.status("staging")[0].servers
        serving.set_weights(environment=environment, model="iris", weights={"v1": 100})

        body = {"inputs": [{"name": "input-0", "shape": [len(samples), 4], "datatype": "FP64",
                            "data": [x for row in samples for x in row]}]}
        request = urllib.request.Request(
            serving.endpoint(environment=environment, model="iris") + "/infer",
            data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            answer = json.loads(response.read())
            assert response.headers["X-Flywheel-Version"] == "v1"
        assert (answer["model_name"], answer["model_version"]) == ("iris", "v1")
        predictions = answer["outputs"][0]["data"]
        assert len(predictions) == 2
        assert predictions == [0, 2]  # setosa, virginica

        with opener.open(serving.metrics_url(environment=environment), timeout=10) as response:
            metrics = response.read().decode()
        (line,) = [x for x in metrics.splitlines() if x.startswith("flywheel_requests_total{")]
        for label in ('environment="staging"', 'model="iris"', 'outcome="success"', 'version="v1"'):
            assert label in line
        assert line.endswith(" 1.0")
        with opener.open(server.metrics_url, timeout=10) as response:
            assert "model_infer_request_success" in response.read().decode()  # MLServer's own metrics
        assert (artifact / "model-settings.json").read_text() == settings_before
        answer = readme_curl(tmp_path)  # the README's curl example, as printed, on this state directory
        assert (answer["model_name"], answer["model_version"]) == ("iris", "v1")
        assert answer["outputs"][0]["data"] == [0]  # one FP64 row of 4 features: setosa
        assert sorted(p.name for p in artifact.iterdir()) == ["model-settings.json", "model.joblib"]
    finally:
        serving.shutdown()

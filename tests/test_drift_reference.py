"""From a train step's reference data to the profile in the version's artifact.

Pinned down here: the local runner gives each step ``FLYWHEEL_REFERENCE_DATA``
(in the run directory) and makes ``flywheel_reference`` importable from the
step's own Python; the run's result names the file the step wrote; the judge
profiles it into the model directory before it digests the artifact, so the
artifact digest covers the profile; a reference that cannot be profiled fails
the run saying why; a run that wrote none has no profile and no error.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from controller.backends.forge.fake import FakeForge
from controller.backends.pipelines import RunRequest, RunResult
from controller.backends.pipelines.local import LocalRunner
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.drift import PROFILE_FILE, read_profile
from controller.engine.judging import Judge
from controller.specs.types import Model, Source, Step

pytestmark = pytest.mark.integration

WRITES_REFERENCE = (
    "import os, sys\n"
    "import flywheel_reference\n"
    "model_dir = os.environ['FLYWHEEL_MODEL_DIR']\n"
    "open(os.path.join(model_dir, 'model.bin'), 'w').write('weights')\n"
    "rows = [[i * 0.5, 'red' if i % 3 else 'blue'] for i in range(300)]\n"
    "flywheel_reference.write(rows, ['size', 'colour'], predictions=[i % 2 for i in range(300)])\n"
)


def _train(tmp_path: Path, code: str) -> RunResult:
    source = tmp_path / "src"
    source.mkdir()
    model = Model(
        name="m", spec_path="specs/m/model.yaml",
        source=Source(path="specs/m", requirements="specs/m/requirements.txt"),
        steps=(Step(name="train", run=f"python -c {shlex.quote(code)}"),),
    )
    request = RunRequest(run_id="r1", model=model, source_dir=source, run_dir=tmp_path / "run")
    return LocalRunner().start(request).wait(timeout=30)


def _record(store: SqlStore, tmp_path: Path, result: RunResult) -> tuple[str, str | None, str | None]:
    judge = Judge(store=store, forge=FakeForge(), work_dir=tmp_path, release_branch="main", clock=FakeClock())
    run = store.create_run(model="m", ref="main", commit="c" * 40, cache_key="k")
    recorded = judge.record_result(run.id, result)
    return recorded.status, recorded.artifact_digest, recorded.error


def test_the_train_steps_reference_becomes_a_profile_in_the_artifact(store: SqlStore, tmp_path: Path) -> None:
    result = _train(tmp_path, WRITES_REFERENCE)
    assert result.status == "succeeded", result
    assert result.reference_data == tmp_path / "run" / "reference-data"
    status, digest, _ = _record(store, tmp_path, result)
    assert status == "succeeded" and digest is not None
    profile = read_profile(tmp_path / "run" / "model" / PROFILE_FILE)
    assert [(f.name, f.kind) for f in profile.features] == [("size", "numeric"), ("colour", "categorical")]
    assert profile.prediction is not None and profile.rows == 300
    (tmp_path / "run" / "model" / PROFILE_FILE).unlink()
    _, without, _ = _record(store, tmp_path, RunResult(run_id="r1", status="succeeded",
                                                       model_dir=tmp_path / "run" / "model"))
    assert without != digest  # the artifact digest covers the profile


def test_a_reference_that_cannot_be_profiled_fails_the_run(store: SqlStore, tmp_path: Path) -> None:
    bad = (
        "import os\n"
        "open(os.path.join(os.environ['FLYWHEEL_MODEL_DIR'], 'model.bin'), 'w').write('w')\n"
        "open(os.environ['FLYWHEEL_REFERENCE_DATA'], 'w').write('a,b\\n1,2\\n3\\n')\n"
    )
    result = _train(tmp_path, bad)
    assert result.status == "succeeded", result
    status, digest, error = _record(store, tmp_path, result)
    assert (status, digest) == ("failed", None)
    assert error is not None and error.startswith("FLYWHEEL_REFERENCE_DATA: ")
    assert "reference-data:3: 1 values, the header names 2" in error


def test_a_run_without_reference_data_has_no_profile(store: SqlStore, tmp_path: Path) -> None:
    code = "import os\nopen(os.path.join(os.environ['FLYWHEEL_MODEL_DIR'], 'model.bin'), 'w').write('w')\n"
    result = _train(tmp_path, code)
    assert result.status == "succeeded" and result.reference_data is None
    status, digest, _ = _record(store, tmp_path, result)
    assert status == "succeeded" and digest is not None
    assert not (tmp_path / "run" / "model" / PROFILE_FILE).exists()

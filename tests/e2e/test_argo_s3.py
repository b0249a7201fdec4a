"""End to end on the cluster home with an S3 bucket for the models: trained on Argo, brought home with boto3.

The staging environment of a repository made with ``flywheel init`` runs
pipelines on the stand-in Argo Server and keeps models in a bucket of moto's
S3 server (a local stand-in of S3's wire format): the steps save the work
directory (the training inputs' sample in it) and the model there as output
artifacts, the next step loads them as input artifacts, and the steps read
production's model, which the controller puts there before submitting, as an
input artifact at ``FLYWHEEL_BASELINE_MODEL_DIR``. ``flywheel run --once``
reports the proposal as on one machine and brings the model home from the
bucket. A run whose model is not in the bucket is an error that names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from controller.app import build_controller, run_controller
from controller.backends.images.fake import FakeImages
from controller.backends.pipelines.argo_artifacts import ArtifactsError, BucketArtifacts
from controller.settings import ControllerSettings, Settings
from controller.specs.types import S3Artifacts
from tests.e2e.test_argo import NAMESPACE, STAGING, _runs, _workflows_of
from tests.e2e.test_proposals import _review, _seed_production
from tests.fakes.argo_server import FakeArgoServer
from tests.fixtures.s3 import fake_aws_credentials, s3_server
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e

BUCKET = "models"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """moto's S3 server with the bucket, and the credentials both the controller and the 'pods' use."""
    fake_aws_credentials(monkeypatch)
    with s3_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        try:
            yield endpoint, client
        finally:
            client.close()


@pytest.fixture
def repo(tmp_path: Path, s3: tuple[str, Any]) -> GitRepo:
    from click.testing import CliRunner

    from controller.cli import main

    assert CliRunner().invoke(main, ["init", str(tmp_path / "ml")]).exit_code == 0
    return GitRepo(tmp_path / "ml")


@pytest.fixture
def argo(repo: GitRepo, s3: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArgoServer]:
    monkeypatch.setenv("ARGO_TOKEN", "s3cret")
    endpoint, _ = s3
    with FakeArgoServer(token="s3cret") as server:
        staging = STAGING.format(namespace=NAMESPACE, server=server.url).replace(
            "pvc: {claimName: flywheel-artifacts, mountPath: /artifacts}",
            f"s3: {{bucket: {BUCKET}, prefix: flywheel, endpoint: '{endpoint}', secret: s3-credentials}}",
        )
        assert "s3:" in staging
        repo.write("environments/staging.yaml", staging)
        repo.commit("Train on Argo, models in S3")
        yield server


def keys(client: Any, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix) :] for item in listed)


def test_a_proposal_trains_with_its_model_in_the_bucket_and_comes_home(
    repo: GitRepo, tmp_path: Path, argo: FakeArgoServer, s3: tuple[str, Any]
) -> None:
    _, client = s3
    state = tmp_path / "state"
    _seed_production(state, accuracy=0.90)
    (state / "seed-artifact" / "production.txt").write_text("v1\n")
    repo.branch("tune-c")
    repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    repo.commit("Lower C")

    settings = Settings(controller=ControllerSettings(repo=str(repo.path), state_dir=state))
    assert (
        run_controller(settings, once=True, controller=build_controller(settings, images=FakeImages())) == 0
    )
    report = _review(state, "tune-c")
    assert "status: success" in report and "production (v1)" in report

    (trained,) = _runs(state, "tune-c")
    [workflow] = _workflows_of(argo, trained)
    assert "model.joblib" in keys(client, f"flywheel/{workflow}/model/")
    assert "holdout.joblib" in keys(client, f"flywheel/{workflow}/work/")  # shared by the steps
    assert "reference-data" in keys(client, f"flywheel/{workflow}/work/")  # the sample, profiled at home
    assert keys(client, f"flywheel/{workflow}/baseline/") == ["production.txt"]  # put before submitting
    assert Path(trained.artifact_path or "").joinpath("model.joblib").is_file()  # brought home
    sample = state / "runs" / str(trained.id) / "reference-data"
    assert (
        sample.read_bytes()
        == client.get_object(Bucket=BUCKET, Key=f"flywheel/{workflow}/work/reference-data")["Body"].read()
    )


def test_a_model_missing_from_the_bucket_is_an_error_naming_where(
    s3: tuple[str, Any], tmp_path: Path
) -> None:
    endpoint, _ = s3
    store = BucketArtifacts(S3Artifacts(bucket=BUCKET, prefix="flywheel", endpoint=endpoint))
    with pytest.raises(ArtifactsError) as missing:
        store.bring_model("flywheel-run-7", tmp_path / "model")
    assert str(missing.value) == f"the run saved no model at s3://{BUCKET}/flywheel/flywheel-run-7/model/"
    assert store.bring_reference("flywheel-run-7", tmp_path / "reference-data") is False
    gone = BucketArtifacts(S3Artifacts(bucket="no-such-bucket", endpoint=endpoint))
    with pytest.raises(ArtifactsError) as failed:
        gone.bring_model("flywheel-run-7", tmp_path / "model")
    assert str(failed.value).startswith("list s3://no-such-bucket/flywheel-run-7/model: ")
    assert "NoSuchBucket" in str(failed.value)

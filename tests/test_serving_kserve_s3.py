"""KServe serving versions from an artifacts bucket, through the real ``kubernetes`` client and boto3.

Pins down, with moto's S3 server as the bucket and the stand-in KServe
downloading each predictor's ``storageUri`` as the storage initializer does:
a model's first version is published to ``<prefix>/models/<model>/<version>/``
(its files, then the marker) and served from there whole; a second one
serves behind a canary percentage and takes all traffic when promoted; every
predictor runs as the Environment's ServiceAccount. A predictor without a
ServiceAccount, or whose ``storageUri`` names nothing in the bucket, does not
come up, and the deploy fails with KServe's reason. S3 out of reach fails
the deploy before anything is written to the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from controller.backends.objects import Bucket
from controller.backends.serving import ServingError
from controller.backends.serving.kserve_publish import PUBLISHED
from controller.backends.serving.kserve_status import read_service
from controller.specs.types import S3Artifacts
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster
from tests.fixtures.s3 import fake_aws_credentials, s3_server

pytestmark = pytest.mark.integration

ACCOUNT = "kserve-models"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """moto's S3 server with the bucket ``models``; ``AWS_*``: the controller's credentials."""
    fake_aws_credentials(monkeypatch)
    with s3_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="models")
        try:
            yield endpoint, client
        finally:
            client.close()


@pytest.fixture
def cluster(tmp_path: Path, s3: tuple[str, Any]) -> Iterator[Cluster]:
    with kserve_cluster(tmp_path, s3=s3[1], s3_accounts=frozenset({ACCOUNT})) as started:
        yield started


def bucket_env(endpoint: str, account: str | None = ACCOUNT) -> Any:
    store = S3Artifacts(bucket="models", prefix="flywheel", endpoint=endpoint, secret="s3-credentials")
    return replace(ENV, artifacts=store, serving_service_account=account)


def keys(client: Any, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix) for item in listed)


def routes(cluster: Cluster, environment: Any) -> dict[str, int]:
    observed = cluster.backend.observe(environment=environment).routes.get("iris", {})
    return {version: weight for version, weight in observed.items() if weight > 0}


def test_versions_published_to_the_bucket_serve_canary_and_promote(
    cluster: Cluster, s3: tuple[str, Any]
) -> None:
    endpoint, client = s3
    env, backend = bucket_env(endpoint), cluster.backend
    backend.deploy(environment=env, version=cluster.version("v1"))
    assert keys(client, "flywheel/models/iris/v1/") == [PUBLISHED, "stub.json"]
    predictor = cluster.service()["spec"]["predictor"]
    assert predictor["serviceAccountName"] == ACCOUNT
    assert {"name": "STORAGE_URI", "value": "s3://models/flywheel/models/iris/v1/"} in predictor[
        "containers"
    ][0]["env"]
    assert routes(cluster, env) == {"v1": 100}
    assert cluster.answered_by(2) == ["iris-predictor-00001"] * 2

    backend.deploy(environment=env, version=cluster.version("v2"))
    backend.smoke_test(environment=env, model="iris", version="v2", inputs=[[6.0, 2.2, 5.0, 1.5]])
    backend.set_weights(environment=env, model="iris", weights={"v2": 25, "v1": 75})
    assert routes(cluster, env) == {"v2": 25, "v1": 75}
    answered = cluster.answered_by(4)
    assert answered.count("iris-predictor-00002") == 1 and answered.count("iris-predictor-00001") == 3

    backend.set_weights(environment=env, model="iris", weights={"v2": 100})
    assert read_service(cluster.service()).canary_percent is None
    assert routes(cluster, env) == {"v2": 100}
    assert cluster.answered_by(2) == ["iris-predictor-00002"] * 2
    assert cluster.kserve.started == ["iris-predictor-00001", "iris-predictor-00002"]


def test_a_predictor_without_a_service_account_does_not_come_up(
    cluster: Cluster, s3: tuple[str, Any]
) -> None:
    with pytest.raises(ServingError) as failed:
        cluster.backend.deploy(environment=bucket_env(s3[0], account=None), version=cluster.version("v1"))
    assert "does not become ready: PredictorReady: Revision iris-predictor-00001 failed: " in str(
        failed.value
    )
    assert "storage-initializer: no credentials for s3://models/flywheel/models/iris/v1/" in str(failed.value)


def test_a_storage_uri_naming_nothing_in_the_bucket_does_not_come_up(
    tmp_path: Path, s3: tuple[str, Any]
) -> None:
    endpoint, client = s3

    client.create_bucket(Bucket="elsewhere")

    def elsewhere(spec: S3Artifacts) -> Bucket:  # a controller publishing to another bucket
        return Bucket(replace(spec, bucket="elsewhere"))

    with (
        kserve_cluster(tmp_path, s3=client, s3_accounts=frozenset({ACCOUNT}), bucket_of=elsewhere) as cluster,
        pytest.raises(ServingError) as failed,
    ):
        cluster.backend.deploy(environment=bucket_env(endpoint), version=cluster.version("v1"))
    assert "No model found in flywheel/models/iris/v1/" in str(failed.value)
    listed = client.list_objects_v2(Bucket="elsewhere", Prefix="flywheel/models/iris/v1/")["Contents"]
    assert len(listed) == 2 and keys(client, "flywheel/models/iris/v1/") == []


def test_s3_out_of_reach_fails_the_deploy_before_anything_is_written(cluster: Cluster) -> None:
    env = bucket_env("http://127.0.0.1:9")
    cluster.backend.publisher.bucket_of = lambda spec: Bucket(
        spec,
        client=boto3.client(
            "s3",
            endpoint_url=spec.endpoint,
            config=Config(retries={"max_attempts": 1}),
        ),
    )
    with pytest.raises(ServingError, match=r"^publishing iris v1 for staging: read s3://models/flywheel/"):
        cluster.backend.deploy(environment=env, version=cluster.version("v1"))
    assert cluster.kserve.services == {}

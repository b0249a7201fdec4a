"""A version's artifact published to an artifacts bucket for KServe: once, whole, or a clear error.

Pins down :class:`~controller.backends.serving.kserve_publish.ArtifactPublisher`
on an ``artifacts.s3`` Environment, against moto's in-process S3: every file
of the version goes under ``<prefix>/models/<model>/<version>/`` and the
marker last; a version whose marker is there is not uploaded again; an upload
cut short leaves no marker, so the next publish uploads it whole; S3 out of
reach is one :class:`ServingError` naming the version, the environment, the
object and S3's answer. The ``storageUri`` is the prefix with a trailing slash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from controller.backends.objects import Bucket
from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.kserve_publish import PUBLISHED, ArtifactPublisher
from controller.specs.types import Environment, S3Artifacts, Serving
from tests.fixtures.s3 import fake_aws_credentials

pytestmark = pytest.mark.unit

STORE = S3Artifacts(bucket="models", prefix="flywheel/", endpoint=None)
ENV = Environment(
    name="staging",
    spec_path="environments/staging.yaml",
    home="cluster",
    serving_backend="kserve",
    artifacts=STORE,
)
PREFIX = "flywheel/models/iris/v3/"


class Recording:
    """A boto3 client that records the keys written, in order, and can fail the n-th file's upload."""

    def __init__(self, client: Any, *, fail_upload: int | None = None) -> None:
        self.client = client
        self.fail_upload = fail_upload
        self.written: list[str] = []

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        if self.fail_upload is not None and len(self.written) == self.fail_upload:
            from boto3.exceptions import S3UploadFailedError

            raise S3UploadFailedError(f"Failed to upload {filename} to {bucket}/{key}: connection reset")
        self.client.upload_file(filename, bucket, key)
        self.written.append(key)

    def put_object(self, **kwargs: Any) -> Any:
        self.written.append(kwargs["Key"])
        return self.client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_aws_credentials(monkeypatch)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        yield client


def version(tmp_path: Path) -> ServedVersion:
    artifact = tmp_path / "run" / "model"
    (artifact / "sub").mkdir(parents=True)
    (artifact / "model.joblib").write_bytes(b"model")
    (artifact / "sub" / "model-settings.json").write_text("{}")
    return ServedVersion(
        model="iris", version="v3", serving=Serving(runtime="sklearn"), artifact_uri=str(artifact)
    )


def keys(client: Any) -> list[str]:
    listed = client.list_objects_v2(Bucket="models", Prefix=PREFIX).get("Contents", [])
    return sorted(item["Key"].removeprefix(PREFIX) for item in listed)


def test_files_go_under_the_versions_key_and_the_marker_last(s3: Any, tmp_path: Path) -> None:
    recording = Recording(s3)
    publisher = ArtifactPublisher(
        claim_dir=lambda pvc: tmp_path, bucket_of=lambda spec: Bucket(spec, client=recording)
    )
    uri = publisher.publish(ENV, version(tmp_path))
    assert uri == f"s3://models/{PREFIX}"
    assert keys(s3) == sorted([PUBLISHED, "model.joblib", "sub/model-settings.json"])
    assert recording.written[-1] == f"{PREFIX}{PUBLISHED}"
    marker = json.loads(s3.get_object(Bucket="models", Key=f"{PREFIX}{PUBLISHED}")["Body"].read())
    assert marker["files"] == [f"{PREFIX}model.joblib", f"{PREFIX}sub/model-settings.json"]


def test_a_published_version_is_not_uploaded_again(s3: Any, tmp_path: Path) -> None:
    recording = Recording(s3)
    publisher = ArtifactPublisher(
        claim_dir=lambda pvc: tmp_path, bucket_of=lambda spec: Bucket(spec, client=recording)
    )
    served = version(tmp_path)
    publisher.publish(ENV, served)
    first = list(recording.written)
    publisher.publish(ENV, served)
    assert recording.written == first


def test_an_upload_cut_short_counts_as_not_there_and_is_done_again_whole(s3: Any, tmp_path: Path) -> None:
    served = version(tmp_path)
    broken = ArtifactPublisher(
        claim_dir=lambda pvc: tmp_path,
        bucket_of=lambda spec: Bucket(spec, client=Recording(s3, fail_upload=1)),
    )
    with pytest.raises(ServingError) as failed:
        broken.publish(ENV, served)
    assert str(failed.value).startswith(
        f"publishing iris v3 for staging: write s3://models/{PREFIX}sub/model-settings.json: Failed to upload"
    )
    assert keys(s3) == ["model.joblib"]  # a half model, and no marker
    again = Recording(s3)
    ArtifactPublisher(
        claim_dir=lambda pvc: tmp_path, bucket_of=lambda spec: Bucket(spec, client=again)
    ).publish(ENV, served)
    assert again.written == [
        f"{PREFIX}model.joblib",
        f"{PREFIX}sub/model-settings.json",
        f"{PREFIX}{PUBLISHED}",
    ]


class Unreachable:
    """A boto3 client of an S3 that does not answer: every call fails as botocore fails to connect."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://minio.minio:9000/models")

        return fail


def test_s3_out_of_reach_is_one_error_saying_where_and_what(tmp_path: Path) -> None:
    publisher = ArtifactPublisher(
        claim_dir=lambda pvc: tmp_path, bucket_of=lambda spec: Bucket(spec, client=Unreachable())
    )
    with pytest.raises(ServingError) as failed:
        publisher.publish(ENV, version(tmp_path))
    assert str(failed.value) == (
        f"publishing iris v3 for staging: read s3://models/{PREFIX}{PUBLISHED}: "
        'Could not connect to the endpoint URL: "http://minio.minio:9000/models"'
    )

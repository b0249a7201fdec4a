"""The InferenceService a version is served by on KServe, and how its status is read.

Pins down: every rendered InferenceService (sklearn, xgboost, custom; with and
without a canary percentage; with the previous predictor kept) validates
against KServe's own v1beta1 schema, and an invalid one does not; the
MLServer runtime speaks v2 with the model's format and reads the version's
artifact from the artifacts claim, or from the bucket under its prefix, as
the Environment's ServiceAccount; names are DNS labels KServe can derive
from; the status reader maps revisions to versions only where it knows
(recorded, or the latest revision of the generation KServe observed), reports
any other revision by its name, and tells a raw deployment from a serverless
one by the annotation or the status.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.kserve_spec import (
    inference_service,
    predictor,
    service_name,
    storage_uri,
)
from controller.backends.serving.kserve_status import read_service
from controller.specs.types import Environment, PvcArtifacts, S3Artifacts, Serving
from tests.fixtures.required import reference

pytestmark = pytest.mark.unit

ENV = Environment(
    name="staging",
    spec_path="environments/staging.yaml",
    home="cluster",
    serving_backend="kserve",
    serving_namespace="ml-serving",
    artifacts=PvcArtifacts(claim_name="flywheel-artifacts"),
)


@cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(
        json.loads(reference("kserve-inferenceservice-v1beta1.schema.json").read_text())
    )


def version(runtime: str = "sklearn", label: str = "v3", command: str | None = None) -> ServedVersion:
    return ServedVersion(
        model="iris", version=label, serving=Serving(runtime=runtime, command=command), artifact_uri="/tmp/x"
    )


def render(runtime: str = "sklearn", environment: Environment = ENV, **kwargs: Any) -> dict[str, Any]:
    served = version(runtime, command="python serve.py" if runtime == "custom" else None)
    spec = predictor(
        served,
        uri=storage_uri(environment, "iris", "v3"),
        image="registry.example.com/ml/iris:abc",
        service_account=environment.serving_service_account,
    )
    return inference_service(environment=environment, version=served, spec_predictor=spec, **kwargs)


S3_ENV = replace(
    ENV,
    artifacts=S3Artifacts(bucket="models", prefix="flywheel", endpoint="http://minio.minio:9000"),
    serving_service_account="kserve-models",
)


def errors(document: dict[str, Any]) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator().iter_errors(document)]


@pytest.mark.parametrize("environment", [ENV, S3_ENV], ids=["claim", "bucket"])
@pytest.mark.parametrize("runtime", ["sklearn", "xgboost", "custom"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"canary_percent": 10},
        {"canary_percent": 0, "previous": ("v2", {"model": {"storageUri": "pvc://c/p"}})},
    ],
    ids=["whole", "canary", "previous"],
)
def test_every_inference_service_validates_against_kserves_schema(
    runtime: str, extra: dict[str, Any], environment: Environment
) -> None:
    document = render(runtime, environment, **extra)
    assert errors(document) == []
    broken = json.loads(json.dumps(document))
    broken["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    assert errors(broken)  # the schema does check


def test_a_builtin_runtime_is_mlserver_on_v2_reading_the_artifact_from_the_claim() -> None:
    document = render("xgboost", canary_percent=25)
    assert document["apiVersion"] == "serving.kserve.io/v1beta1" and document["kind"] == "InferenceService"
    assert document["metadata"]["name"] == "iris" and document["metadata"]["namespace"] == "ml-serving"
    assert document["metadata"]["labels"]["flywheel.dev/model"] == "iris"
    assert document["metadata"]["annotations"]["flywheel.dev/version"] == "v3"
    spec = document["spec"]["predictor"]
    assert spec["canaryTrafficPercent"] == 25
    assert spec["model"] == {
        "modelFormat": {"name": "xgboost"},
        "protocolVersion": "v2",
        "runtime": "kserve-mlserver",
        "storageUri": "pvc://flywheel-artifacts/models/iris/v3",
    }
    assert spec["labels"] == {"flywheel.dev/model": "iris", "flywheel.dev/version": "v3"}


def test_a_first_version_has_no_canary_percentage_and_a_rollback_keeps_the_previous_predictor() -> None:
    assert "canaryTrafficPercent" not in render()["spec"]["predictor"]
    previous = {"model": {"storageUri": "pvc://flywheel-artifacts/models/iris/v2"}}
    annotations = render(canary_percent=0, previous=("v2", previous))["metadata"]["annotations"]
    assert annotations["flywheel.dev/previous-version"] == "v2"
    assert json.loads(annotations["flywheel.dev/previous-predictor"]) == previous


def test_a_custom_server_runs_the_models_image_with_its_command() -> None:
    (container,) = render("custom")["spec"]["predictor"]["containers"]
    assert container["image"] == "registry.example.com/ml/iris:abc"
    assert container["command"] == ["/bin/sh", "-c", "python serve.py"]
    assert {"name": "STORAGE_URI", "value": "pvc://flywheel-artifacts/models/iris/v3"} in container["env"]
    with pytest.raises(ServingError, match="needs the model's image"):
        predictor(version("custom", command="serve"), uri="pvc://c/p", image=None)


def test_names_are_dns_labels() -> None:
    assert service_name("Iris_Model") == "iris-model"
    assert service_name("1st") == "m-1st"
    assert len(service_name("x" * 80)) <= 45


@pytest.mark.parametrize(
    ("prefix", "uri"),
    [
        ("", "s3://models/models/iris/v1/"),
        ("flywheel", "s3://models/flywheel/models/iris/v1/"),
        ("/flywheel//ml/", "s3://models/flywheel/ml/models/iris/v1/"),
    ],
)
def test_a_bucket_serves_the_version_under_its_prefix_with_a_trailing_slash(prefix: str, uri: str) -> None:
    s3 = Environment(name="s", spec_path="e.yaml", artifacts=S3Artifacts(bucket="models", prefix=prefix))
    assert storage_uri(s3, "iris", "v1") == uri  # the slash: KServe's initializer would take v10's keys too


def test_an_environment_without_an_artifact_store_has_no_storage_uri() -> None:
    bare = Environment(name="s", spec_path="e.yaml")
    with pytest.raises(
        ServingError, match=r"environment 's'.*names none \(artifacts\.pvc or artifacts\.s3\)"
    ):
        storage_uri(bare, "iris", "v1")


def status(**predictor_status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "iris",
            "resourceVersion": "7",
            "generation": 2,
            "annotations": {
                "flywheel.dev/version": "v2",
                "flywheel.dev/revisions": json.dumps({"iris-predictor-00001": "v1"}),
            },
        },
        "spec": {"predictor": {"canaryTrafficPercent": 10}},
        "status": {
            "observedGeneration": 2,
            "url": "http://iris.ml-serving.example.com",
            "conditions": [{"type": "PredictorReady", "status": "True"}],
            "components": {"predictor": predictor_status},
        },
    }


def test_status_maps_the_canary_and_the_rolled_out_revision_to_their_versions() -> None:
    service = read_service(
        status(
            latestCreatedRevision="iris-predictor-00002",
            latestReadyRevision="iris-predictor-00002",
            latestRolledoutRevision="iris-predictor-00001",
            traffic=[
                {
                    "revisionName": "iris-predictor-00002",
                    "percent": 10,
                    "latestRevision": True,
                    "tag": "latest",
                },
                {
                    "revisionName": "iris-predictor-00001",
                    "percent": 90,
                    "latestRevision": False,
                    "tag": "prev",
                },
            ],
        )
    )
    assert service.routes() == {"v2": 10, "v1": 90}
    assert service.latest_ready_now == "iris-predictor-00002"
    assert (
        service.revision_of("v2") == "iris-predictor-00002"
        and service.revision_of("v1") == "iris-predictor-00001"
    )
    assert service.canary_percent == 10 and not service.raw
    assert service.url == "http://iris.ml-serving.example.com"


def test_a_revision_kserve_has_not_caught_up_with_is_reported_by_its_name() -> None:
    document = status(
        latestCreatedRevision="iris-predictor-00002",
        latestReadyRevision="iris-predictor-00002",
        traffic=[{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}],
    )
    document["metadata"]["generation"] = 3  # a newer spec KServe has not seen yet
    service = read_service(document)
    assert service.routes() == {"iris-predictor-00002": 100}
    assert service.latest_ready_now is None


def test_a_failing_predictor_says_why_and_is_not_ready() -> None:
    document = status(
        latestCreatedRevision="iris-predictor-00002", latestReadyRevision="iris-predictor-00001"
    )
    document["status"]["conditions"] = [
        {"type": "PredictorReady", "status": "False", "message": "Revision failed: model not found"}
    ]
    service = read_service(document)
    assert service.latest_ready_now is None
    assert service.failure() == "PredictorReady: Revision failed: model not found"


@pytest.mark.parametrize(
    ("where", "mode", "raw"),
    [("annotation", "RawDeployment", True), ("status", "Standard", True), ("status", "Serverless", False)],
)
def test_the_deployment_mode_comes_from_the_annotation_or_the_status(
    where: str, mode: str, raw: bool
) -> None:
    document = status()
    if where == "annotation":
        document["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    else:
        document["status"]["deploymentMode"] = mode
    assert read_service(document).raw is raw


def test_kserve_can_split_only_between_the_rolling_out_and_the_rolled_out_version() -> None:
    from kubernetes import client as k8s

    from controller.backends.serving.kserve import KServeServing
    from controller.clock import SYSTEM_CLOCK

    backend = KServeServing(api=k8s.ApiClient(), clock=SYSTEM_CLOCK, claim_dir=lambda pvc: Path("/nowhere"))
    document = status(
        latestCreatedRevision="iris-predictor-00002",
        latestReadyRevision="iris-predictor-00002",
        latestRolledoutRevision="iris-predictor-00001",
    )
    document["status"]["deploymentMode"] = "Serverless"  # known: no need to ask the cluster
    service = read_service(document)
    assert backend._canary_for(ENV, service, {"v2": 30, "v1": 70}) == (30, {"v2": 30, "v1": 70})
    assert backend._canary_for(ENV, service, {"v1": 100}) == (0, {"v2": 0, "v1": 100})
    assert backend._canary_for(ENV, service, {"v2": 100}) == (None, {"v2": 100})
    with pytest.raises(ServingError, match=r"between the version rolling out \(v2\) and the one rolled out"):
        backend._canary_for(ENV, service, {"v2": 50, "v0": 50})


def test_a_new_predictor_replaces_the_old_one_whole() -> None:
    from controller.backends.serving.kserve import _replace_predictor

    old = {"model": {"storageUri": "pvc://c/v1"}, "labels": {"a": "b"}, "canaryTrafficPercent": 10}
    new = {"containers": [{"name": "kserve-container"}], "labels": {"a": "c"}}
    patch = _replace_predictor(old, new, canary=0)["spec"]["predictor"]
    assert patch == {
        "model": None,
        "containers": [{"name": "kserve-container"}],
        "labels": {"a": "c"},
        "canaryTrafficPercent": 0,
    }


@pytest.mark.parametrize("runtime", ["sklearn", "xgboost", "custom"])
def test_every_predictor_runs_as_the_environments_service_account_reading_the_bucket(runtime: str) -> None:
    spec = render(runtime, S3_ENV)["spec"]["predictor"]
    assert spec["serviceAccountName"] == "kserve-models"
    uri = "s3://models/flywheel/models/iris/v3/"
    if runtime == "custom":
        assert {"name": "STORAGE_URI", "value": uri} in spec["containers"][0]["env"]
    else:
        assert spec["model"]["storageUri"] == uri
    assert "serviceAccountName" not in render(runtime)["spec"]["predictor"]  # none named: KServe's default
    broken = render(runtime, S3_ENV)
    broken["spec"]["predictor"]["serviceAccountName"] = ["kserve-models"]
    assert errors(broken)  # the schema checks the field

"""The cluster Environment in the spec language: its schema, typed record and rules between its fields.

Also pins down where a model's ``source.dockerfile`` and step ``resources`` are
accepted: only where its pipeline runs in a cluster environment (its first
stage's), refused, located, where it trains on the embedded home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.specs import load_catalog, schemas
from controller.specs.build import build_environment
from controller.specs.checks import check_document
from controller.specs.schema import check
from controller.specs.types import ArgoSpec, Catalog, ImagesSpec, PvcArtifacts, S3Artifacts

pytestmark = pytest.mark.unit

CLUSTER = """
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata: {name: staging}
spec:
  home: cluster
  pipeline:
    runner: argo
    namespace: ml-pipelines
    argo:
      server: https://argo-server.argo.svc:2746
      serviceAccount: flywheel-steps
      git: {secret: repo-credentials}
      token: {env: ARGO_TOKEN}
      tls: {caFile: /etc/ssl/argo-ca.pem, insecureSkipVerify: false}
  images:
    registry: registry.example.com:5000
    repository: ml/flywheel
    baseImage: python:3.11-slim
    pushSecret: registry-credentials
    insecure: true
  artifacts:
    s3: {bucket: models, prefix: flywheel, endpoint: "https://minio.minio:9000", secret: s3-credentials}
  serving:
    backend: local
"""


def cluster(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CLUSTER)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc["spec"]
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return doc


def test_the_example_cluster_environment_is_valid_and_typed() -> None:
    doc = cluster()
    assert check("Environment", doc) == [] and check_document("Environment", doc) == []
    env = build_environment(doc, "environments/staging.yaml")
    assert env.home == "cluster" and env.runner == "argo" and env.pipeline_namespace == "ml-pipelines"
    assert env.argo == ArgoSpec(
        server="https://argo-server.argo.svc:2746",
        service_account="flywheel-steps",
        token_env="ARGO_TOKEN",
        token_file=None,
        ca_file="/etc/ssl/argo-ca.pem",
        insecure_skip_verify=False,
        git_secret="repo-credentials",
    )
    assert env.images == ImagesSpec(
        registry="registry.example.com:5000",
        repository="ml/flywheel",
        base_image="python:3.11-slim",
        push_secret="registry-credentials",
        insecure=True,
    )
    assert env.artifacts == S3Artifacts(
        bucket="models", prefix="flywheel", endpoint="https://minio.minio:9000", secret="s3-credentials"
    )


def test_optional_fields_take_their_defaults() -> None:
    doc = cluster(
        pipeline__argo={"server": "http://127.0.0.1:2746", "token": {"file": "/var/run/secrets/argo/token"}},
        images={"registry": "localhost:5000", "repository": "ml", "baseImage": "python:3.11-slim"},
        artifacts={"pvc": {"claimName": "flywheel-artifacts"}},
    )
    assert check("Environment", doc) == [] and check_document("Environment", doc) == []
    env = build_environment(doc, "environments/staging.yaml")
    assert env.argo == ArgoSpec(
        server="http://127.0.0.1:2746",
        service_account=None,
        token_env=None,
        token_file="/var/run/secrets/argo/token",
        ca_file=None,
        insecure_skip_verify=False,
    )
    assert env.images is not None and env.images.push_secret is None and not env.images.insecure
    assert env.artifacts == PvcArtifacts(claim_name="flywheel-artifacts", mount_path="/artifacts")


def test_an_embedded_environment_has_no_cluster_parts() -> None:
    doc = {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "dev"},
        "spec": {},
    }
    env = build_environment(doc, "environments/dev.yaml")
    assert (env.argo, env.images, env.artifacts) == (None, None, None)
    assert check_document("Environment", doc) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"home": "embedded", "images": None, "artifacts": None},
            [(("spec", "home"), "needs home: cluster")],
        ),
        ({"pipeline__argo": None}, [(("spec", "pipeline", "runner"), "needs pipeline.argo")]),
        ({"images": None}, [(("spec", "home"), "needs images")]),
        ({"artifacts": None}, [(("spec", "home"), "needs artifacts")]),
        ({"pipeline__runner": "local"}, [(("spec", "pipeline", "runner"), "needs pipeline.runner: argo")]),
        (
            {"home": None, "pipeline__runner": None},
            [
                (("spec", "pipeline", "argo"), "is for runner 'argo' only"),
                (("spec", "pipeline", "namespace"), "is for runner 'argo' only"),
                (("spec", "images"), "is for home 'cluster' only"),
                (("spec", "artifacts"), "is for home 'cluster' only"),
            ],
        ),
    ],
)
def test_the_cluster_parts_go_together(changes: dict[str, Any], expected: list[tuple[Any, str]]) -> None:
    doc = cluster(**changes)
    assert check("Environment", doc) == []
    problems = check_document("Environment", doc)
    assert [p.path for p in problems] == [path for path, _ in expected]
    for problem, (_, words) in zip(problems, expected, strict=True):
        assert words in problem.message


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"pipeline__argo__server": "argo-server:2746"}, "server"),
        ({"pipeline__argo__token": {}}, "token"),
        ({"pipeline__argo__token": {"file": "relative/token"}}, "file"),
        ({"pipeline__argo__git": {}}, "git"),
        ({"pipeline__argo__git": {"secret": "Repo Credentials"}}, "secret"),
        ({"pipeline__argo__git": {"secret": "x", "key": "y"}}, "git"),
        ({"images__registry": "https://registry.example.com"}, "registry"),
        ({"images__repository": "ML/Flywheel"}, "repository"),
        ({"images__baseImage": "python 3.11"}, "baseImage"),
        ({"artifacts": {}}, "artifacts"),
        ({"artifacts": {"pvc": {"claimName": "x", "mountPath": "artifacts"}}}, "mountPath"),
        ({"artifacts": {"s3": {"bucket": "Models"}}}, "bucket"),
    ],
)
def test_the_schema_refuses_malformed_cluster_fields(changes: dict[str, Any], path: str) -> None:
    problems = check("Environment", cluster(**changes))
    assert problems and any(path in p.path for p in problems), problems


def test_every_cluster_field_is_described() -> None:
    spec = schemas()["Environment"]["properties"]["spec"]["properties"]
    for name in ("images", "artifacts"):
        assert spec[name]["description"]
    assert spec["pipeline"]["properties"]["argo"]["properties"]["server"]["description"]
    assert spec["pipeline"]["properties"]["argo"]["properties"]["git"]["properties"]["secret"]["description"]


def _catalog_with(environment: str, *, first_stage: str = "staging") -> Catalog:

    corpus = Path(__file__).parent / "spec_corpus" / "_base"
    model = (corpus / "specs/demo/model.yaml").read_text()
    model = model.replace('python: "3.11"\n', 'python: "3.11"\n    dockerfile: Dockerfile\n')
    model = model.replace("timeout: 10m\n", "timeout: 10m\n        resources: {cpu: 500m, memory: 1Gi}\n")
    model = model.replace("- environment: staging", f"- environment: {first_stage}")
    files = {f"environments/{p.name}": p.read_bytes() for p in (corpus / "environments").iterdir()}
    files["environments/staging.yaml"] = environment.encode()
    files["specs/demo/model.yaml"] = model.encode()
    files["policies/default.yaml"] = (corpus / "policies/default.yaml").read_bytes()
    return load_catalog(files)


def test_a_dockerfile_and_resources_act_where_the_model_trains_in_a_cluster() -> None:
    doc = cluster(artifacts={"pvc": {"claimName": "flywheel-artifacts"}})
    environment = yaml.safe_dump(doc)
    catalog = _catalog_with(environment)
    assert catalog.errors == ()
    model = catalog.models["demo"]
    assert model.source.dockerfile == "specs/demo/Dockerfile" and model.steps[0].resources.memory == "1Gi"
    assert catalog.environments["staging"].home == "cluster"


def test_a_dockerfile_and_resources_are_refused_where_the_model_trains_on_one_machine() -> None:
    embedded = (Path(__file__).parent / "spec_corpus/_base/environments/staging.yaml").read_text()
    catalog = _catalog_with(embedded)
    assert [e.path for e in catalog.errors] == ["spec.source.dockerfile", "spec.pipeline.steps[0].resources"]
    assert all("'staging', on the embedded home" in e.message for e in catalog.errors)
    assert "demo" not in catalog.models


def test_kserve_serving_is_typed_and_asks_for_the_cluster_and_prometheus() -> None:
    doc = cluster(
        artifacts={"pvc": {"claimName": "flywheel-artifacts"}},
        serving={"backend": "kserve", "namespace": "ml-serving"},
        metrics={"source": "prometheus", "prometheusUrl": "http://prometheus:9090"},
    )
    assert check("Environment", doc) == [] and check_document("Environment", doc) == []
    env = build_environment(doc, "environments/staging.yaml")
    assert (env.serving_backend, env.serving_namespace) == ("kserve", "ml-serving")
    doc["spec"]["metrics"] = {"source": "builtin"}
    (problem,) = check_document("Environment", doc)
    assert problem.path == ("spec", "serving", "backend")
    assert "needs metrics.source: prometheus" in problem.message


def test_kserve_serving_is_refused_on_the_embedded_home_and_its_namespace_without_it() -> None:
    doc = {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "dev"},
        "spec": {
            "serving": {"backend": "kserve"},
            "metrics": {"source": "prometheus", "prometheusUrl": "http://localhost:9090"},
        },
    }
    (problem,) = check_document("Environment", doc)
    assert problem.path == ("spec", "serving", "backend")
    assert problem.message.startswith("'kserve' needs home: cluster (KServe serves in a Kubernetes cluster")
    doc["spec"]["serving"] = {"backend": "local", "namespace": "ml-serving"}
    (problem,) = check_document("Environment", doc)
    assert problem.path == ("spec", "serving", "namespace")
    assert "is for serving.backend 'kserve' only" in problem.message


def test_kserve_reading_a_bucket_runs_as_a_service_account_and_only_kserve_has_one() -> None:
    doc = cluster(
        artifacts={"s3": {"bucket": "models", "prefix": "flywheel", "endpoint": "http://minio.minio:9000"}},
        serving={"backend": "kserve", "serviceAccountName": "kserve-models"},
        metrics={"source": "prometheus", "prometheusUrl": "http://prometheus:9090"},
    )
    assert check("Environment", doc) == [] and check_document("Environment", doc) == []
    env = build_environment(doc, "environments/staging.yaml")
    assert env.serving_service_account == "kserve-models"
    doc["spec"]["serving"]["serviceAccountName"] = "Not A Name"
    assert [e.path for e in check("Environment", doc)] == [("spec", "serving", "serviceAccountName")]
    del doc["spec"]["serving"]["serviceAccountName"]
    (problem,) = check_document("Environment", doc)
    assert problem.path == ("spec", "serving", "backend")
    assert problem.message.startswith("'kserve' with artifacts.s3 needs serving.serviceAccountName")
    doc["spec"]["serving"] = {"backend": "local", "serviceAccountName": "kserve-models"}
    doc["spec"]["metrics"] = {"source": "builtin"}
    (problem,) = check_document("Environment", doc)
    assert problem.path == ("spec", "serving", "serviceAccountName")
    assert "is for serving.backend 'kserve' only" in problem.message

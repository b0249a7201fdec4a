"""``flywheel manifests``: the cluster home's objects for a commit, written offline and valid.

A repository made by ``flywheel init`` gets a cluster environment for its
staging stage; the command writes the image build (ConfigMap and BuildKit
Job) and the Workflow of the model that trains there. The Workflow validates
against both reference Argo schemas and the built-in kinds with
``kubernetes-validate``; the same commit renders the same bytes; the files
name the commit the pods check out and the image the runner would ensure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator, Draft202012Validator

from controller.backends.pipelines.argo_workflow import REPO_DIR
from controller.cli import main
from tests.e2e.test_argo import STAGING
from tests.fixtures.required import reference
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration

K8S_VERSION = "1.30.0"
ARGO_SCHEMAS = ("argo-workflows-v3.7.18.schema.json", "argo-workflows.schema.json")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    repo = GitRepo(tmp_path / "ml")
    repo.write(
        "environments/staging.yaml", STAGING.format(namespace="ml-pipelines", server="https://argo:2746")
    )
    repo.commit("Train on Argo")
    return repo


def head(repo: GitRepo) -> str:
    return repo.git("rev-parse", "HEAD").strip()


def render(repo: GitRepo, out: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    result = CliRunner().invoke(main, ["manifests", "--repo", str(repo.path), "--out", str(out), *args])
    documents = [yaml.safe_load(path.read_text()) for path in sorted(out.rglob("*.yaml"))]
    return result.exit_code, result.output, documents


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {d["kind"]: d for d in documents}
    assert len(kinds) == len(documents), "one object of each kind"
    return kinds


def test_a_cluster_repository_renders_a_workflow_and_an_image_build_that_validate(
    repo: GitRepo, tmp_path: Path
) -> None:
    code, output, documents = render(repo, tmp_path / "m")
    assert code == 0, output
    kinds = by_kind(documents)
    assert set(kinds) == {"ConfigMap", "Job", "Workflow"}
    for path in (tmp_path / "m").rglob("*.yaml"):
        assert path.relative_to(tmp_path / "m").parts[:2] == ("iris", "staging")
        assert str(path) in output  # every file written is named
    workflow = kinds["Workflow"]
    for name in ARGO_SCHEMAS:
        validator = Draft7Validator(json.loads(reference(name).read_text()))
        errors = [e.message for e in validator.iter_errors(workflow)]
        assert errors == [], name
    for kind in ("ConfigMap", "Job"):
        kubernetes_validate.validate(kinds[kind], K8S_VERSION, strict=True)

    # the pods check out this commit of this repository, in the image the build Job pushes
    commit = head(repo)
    templates = workflow["spec"]["templates"]
    code_artifact = next(a for t in templates for a in t.get("inputs", {}).get("artifacts", []) if "git" in a)
    assert code_artifact["path"] == REPO_DIR
    assert code_artifact["git"]["revision"] == commit
    assert code_artifact["git"]["repo"] == str(repo.path.resolve())
    [builder] = kinds["Job"]["spec"]["template"]["spec"]["containers"]
    [image] = {t["container"]["image"] for t in workflow["spec"]["templates"] if "container" in t}
    assert f"type=image,name={image},push=true" in builder["args"]
    assert workflow["metadata"]["namespace"] == kinds["Job"]["metadata"]["namespace"] == "ml-pipelines"


def test_the_same_commit_renders_the_same_files_and_a_param_change_another_run(
    repo: GitRepo, tmp_path: Path
) -> None:
    assert render(repo, tmp_path / "a")[0] == 0
    assert render(repo, tmp_path / "b")[0] == 0
    files_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.yaml")}
    files_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.yaml")}
    assert files_a == files_b

    repo.edit("specs/iris/model.yaml", "max_iter: 200", "max_iter: 300")
    repo.commit("More iterations")
    _, _, after = render(repo, tmp_path / "c")
    before = by_kind([yaml.safe_load(b) for b in files_a.values()])
    now = by_kind(after)
    assert now["Workflow"]["metadata"]["name"] != before["Workflow"]["metadata"]["name"]  # another run
    assert now["Job"]["metadata"]["name"] == before["Job"]["metadata"]["name"]  # the same image


def test_unknown_names_and_a_repository_with_no_cluster_environment_are_refused(
    repo: GitRepo, tmp_path: Path
) -> None:
    code, output, _ = render(repo, tmp_path / "m", "--model", "nope")
    assert code == 1 and "no valid model 'nope'" in output and "iris" in output
    code, output, _ = render(repo, tmp_path / "m", "--env", "nowhere")
    assert code == 1 and "no valid environment 'nowhere'" in output

    plain = CliRunner().invoke(main, ["init", str(tmp_path / "plain")])
    assert plain.exit_code == 0
    result = CliRunner().invoke(
        main, ["manifests", "--repo", str(tmp_path / "plain"), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 1
    assert "skipped iris: it trains on one machine" in result.output
    assert "no model trains on an Argo environment" in result.output
    assert not (tmp_path / "p").exists()


def test_a_repository_made_for_the_cluster_renders_as_made(tmp_path: Path) -> None:
    """The issue's first try: ``flywheel init repo --home cluster``, then ``flywheel manifests``."""
    made = CliRunner().invoke(main, ["init", str(tmp_path / "repo"), "--home", "cluster"])
    assert made.exit_code == 0, made.output
    code, output, documents = render(GitRepo(tmp_path / "repo"), tmp_path / "m")
    assert code == 0, output
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Workflow") >= 1 and kinds.count("Job") >= 1
    for document in documents:
        if document["kind"] == "Workflow":
            for name in ARGO_SCHEMAS:
                validator = Draft7Validator(json.loads(reference(name).read_text()))
                assert [e.message for e in validator.iter_errors(document)] == [], name
        else:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_a_stage_served_by_kserve_renders_its_inference_service(repo: GitRepo, tmp_path: Path) -> None:
    """Production served by KServe: the InferenceService a first version there gets, valid for KServe."""
    production = STAGING.format(namespace="ml-pipelines", server="https://argo:2746")
    production = production.replace("name: staging", "name: production").replace(
        "  serving:\n    backend: local\n",
        "  serving:\n    backend: kserve\n    namespace: ml-serving\n"
        "  metrics:\n    source: prometheus\n    prometheusUrl: http://prometheus:9090\n",
    )
    assert "backend: kserve" in production
    repo.write("environments/production.yaml", production)
    repo.commit("Serve production on KServe")
    code, output, documents = render(repo, tmp_path / "m")
    assert code == 0, output
    [service] = [d for d in documents if d["kind"] == "InferenceService"]
    [workflow] = [d for d in documents if d["kind"] == "Workflow"]
    assert list((tmp_path / "m" / "iris" / "production").glob("InferenceService-*.yaml"))
    schema = json.loads(reference("kserve-inferenceservice-v1beta1.schema.json").read_text())
    assert [e.message for e in Draft202012Validator(schema).iter_errors(service)] == []
    assert service["metadata"]["namespace"] == "ml-serving"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "sklearn"} and model["protocolVersion"] == "v2"
    version = workflow["metadata"]["labels"]["flywheel.dev/run"]  # the version is named like the run
    assert model["storageUri"] == f"pvc://flywheel-artifacts/models/iris/{version}"
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]  # a first version: deployed whole


def test_a_stage_served_by_kserve_from_a_bucket_renders_its_s3_storage_uri_and_service_account(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Production on KServe with models in a bucket: the predictor reads them as the named ServiceAccount."""
    production = STAGING.format(namespace="ml-pipelines", server="https://argo:2746")
    production = (
        production.replace("name: staging", "name: production")
        .replace(
            "pvc: {claimName: flywheel-artifacts, mountPath: /artifacts}",
            "s3: {bucket: models, prefix: flywheel, endpoint: 'http://minio.minio:9000', "
            "secret: s3-credentials}",
        )
        .replace(
            "  serving:\n    backend: local\n",
            "  serving:\n    backend: kserve\n    namespace: ml-serving\n"
            "    serviceAccountName: kserve-models\n"
            "  metrics:\n    source: prometheus\n    prometheusUrl: http://prometheus:9090\n",
        )
    )
    assert "s3: {bucket: models" in production and "serviceAccountName: kserve-models" in production
    repo.write("environments/production.yaml", production)
    repo.commit("Serve production on KServe from the bucket")
    code, output, documents = render(repo, tmp_path / "m")
    assert code == 0, output
    [service] = [d for d in documents if d["kind"] == "InferenceService"]
    [workflow] = [d for d in documents if d["kind"] == "Workflow"]
    schema = json.loads(reference("kserve-inferenceservice-v1beta1.schema.json").read_text())
    assert [e.message for e in Draft202012Validator(schema).iter_errors(service)] == []
    version = workflow["metadata"]["labels"]["flywheel.dev/run"]
    predictor = service["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"s3://models/flywheel/models/iris/{version}/"
    assert predictor["serviceAccountName"] == "kserve-models"

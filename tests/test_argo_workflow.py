"""A run rendered as an Argo Workflow: DAG, retries, deadlines, resources, step contract, names and labels.

Every rendered Workflow validates against both reference Argo schemas (v3.7.18,
which the SDK is generated for, and the v4.1 line) and round-trips through the
``argo-workflows`` SDK's model classes unchanged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from argo_workflows.api_client import ApiClient
from argo_workflows.configuration import Configuration
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow import IoArgoprojWorkflowV1alpha1Workflow
from argo_workflows.model_utils import validate_and_convert_types
from jsonschema import Draft7Validator

from controller.backends.pipelines.argo_workflow import (
    LABEL_CACHE_KEY,
    LABEL_MODEL,
    LABEL_RUN,
    METRICS_PATH,
    REPO_DIR,
    WorkflowInputs,
    render_workflow,
    workflow_name,
)
from controller.specs.types import (
    ArgoSpec,
    DataInput,
    Environment,
    ImagesSpec,
    Model,
    PvcArtifacts,
    Resources,
    S3Artifacts,
    Source,
    Step,
)
from tests.fixtures.required import reference

pytestmark = pytest.mark.unit

SCHEMAS = ("argo-workflows-v3.7.18.schema.json", "argo-workflows.schema.json")
IMAGE = "registry.example.com:5000/ml/flywheel/iris:abc@sha256:" + "1" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"

MODEL = Model(
    name="iris",
    spec_path="specs/iris/model.yaml",
    source=Source(path="specs/iris", requirements="specs/iris/requirements.txt"),
    data=(DataInput(name="iris", uri="sklearn://iris"), DataInput(name="extra-rows", uri="data/extra.csv")),
    params={"C": 1.0, "seed": 7},
    steps=(
        Step(name="prepare", run="python prepare.py", timeout_seconds=60),
        Step(
            name="train",
            run="python train.py --fast",
            needs=("prepare",),
            retries=2,
            timeout_seconds=600,
            resources=Resources(cpu="2", memory="4Gi", gpu=1),
            env=(("MODE", "full"), ("FLYWHEEL_WORKDIR", "ignored")),
        ),
        Step(name="report", run="python report.py | tee out.txt", needs=("prepare",)),
        Step(name="evaluate", run="python evaluate.py", needs=("train", "report"), timeout_seconds=300),
    ),
)


def environment(artifacts: PvcArtifacts | S3Artifacts) -> Environment:
    return Environment(
        name="staging",
        spec_path="environments/staging.yaml",
        home="cluster",
        runner="argo",
        pipeline_namespace="ml-pipelines",
        argo=ArgoSpec(server="https://argo.example.com:2746", service_account="flywheel-steps"),
        images=ImagesSpec(
            registry="registry.example.com:5000",
            repository="ml/flywheel",
            base_image="python:3.11-slim",
            push_secret="registry-credentials",
        ),
        artifacts=artifacts,
    )


PVC = PvcArtifacts(claim_name="flywheel-artifacts", mount_path="/artifacts")
S3 = S3Artifacts(
    bucket="models", prefix="flywheel", endpoint="https://minio.minio:9000", secret="s3-credentials"
)


def render(artifacts: PvcArtifacts | S3Artifacts = PVC, **changes: Any) -> dict[str, Any]:
    inputs = WorkflowInputs(
        run_id="42",
        model=MODEL,
        environment=environment(artifacts),
        image=IMAGE,
        repository="https://github.com/acme/models.git",
        commit=COMMIT,
        params=MODEL.params,
        data={"iris": "sklearn://iris", "extra-rows": "/state/runs/42/src/data/extra.csv"},
        source_dir=Path("/state/runs/42/src"),
        cache_key="c" * 64,
        max_parallel=3,
    )
    return render_workflow(replace(inputs, **changes))


@cache
def validator(name: str) -> Draft7Validator:
    schema = json.loads(reference(name).read_text())
    return Draft7Validator(schema)


def templates(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in workflow["spec"]["templates"]}


def env_of(template: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in template["container"]["env"]}


@pytest.mark.parametrize("artifacts", [PVC, S3], ids=["pvc", "s3"])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_workflow_validates_against_the_reference_schema(artifacts: Any, schema: str) -> None:
    workflow = render(artifacts)
    for rendered in (workflow, render(artifacts, baseline=True)):
        errors = sorted(validator(schema).iter_errors(rendered), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert validator(schema).is_valid({**workflow, "kind": "CronWorkflow"}) is False  # the schema does check


@pytest.mark.parametrize("artifacts", [PVC, S3], ids=["pvc", "s3"])
def test_the_workflow_round_trips_through_the_sdk_models(artifacts: Any) -> None:
    workflow = render(artifacts)
    model = validate_and_convert_types(  # it converts lists in place: give it a copy
        copy.deepcopy(workflow),
        (IoArgoprojWorkflowV1alpha1Workflow,),
        ["workflow"],
        True,
        True,
        Configuration(),
    )
    assert isinstance(model, IoArgoprojWorkflowV1alpha1Workflow)
    assert ApiClient().sanitize_for_serialization(model) == workflow


def test_the_dag_follows_needs() -> None:
    [dag] = [t for t in render()["spec"]["templates"] if "dag" in t]
    tasks = {t["name"]: t for t in dag["dag"]["tasks"]}
    assert "depends" not in tasks["prepare"]
    assert tasks["train"]["depends"] == "prepare" and tasks["evaluate"]["depends"] == "train && report"
    assert all(t["template"] == name for name, t in tasks.items())


def test_retries_deadlines_and_resources_come_from_the_steps() -> None:
    by_name = templates(render())
    train = by_name["train"]
    assert train["retryStrategy"] == {"limit": "2", "retryPolicy": "Always"}
    assert "retryStrategy" not in by_name["prepare"]
    assert train["activeDeadlineSeconds"] == "600" and by_name["evaluate"]["activeDeadlineSeconds"] == "300"
    assert train["container"]["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "1"},
    }
    assert "resources" not in by_name["prepare"]["container"]


def test_commands_run_in_the_image_in_the_source_directory_of_the_checkout() -> None:
    by_name = templates(render())
    assert by_name["train"]["container"]["command"] == ["python", "train.py", "--fast"]
    assert by_name["report"]["container"]["command"] == ["/bin/sh", "-c", "python report.py | tee out.txt"]
    assert {t["container"]["image"] for t in by_name.values() if "container" in t} == {IMAGE}
    # the image holds no code (it once held it at /flywheel/src): the checkout's model directory
    assert by_name["train"]["container"]["workingDir"] == f"{REPO_DIR}/specs/iris"


def test_every_step_checks_the_code_out_at_the_runs_commit() -> None:
    for template in (t for t in templates(render()).values() if "container" in t):
        [code] = [a for a in template["inputs"]["artifacts"] if "git" in a]
        assert code == {
            "name": "code",
            "path": REPO_DIR,
            "git": {"repo": "https://github.com/acme/models.git", "revision": COMMIT},
        }


@pytest.mark.parametrize(
    ("repository", "credentials"),
    [
        (
            "https://github.com/acme/models.git",
            {
                "usernameSecret": {"name": "repo-credentials", "key": "username"},
                "passwordSecret": {"name": "repo-credentials", "key": "password"},
            },
        ),
        (
            "git@github.com:acme/models.git",
            {"sshPrivateKeySecret": {"name": "repo-credentials", "key": "ssh-privatekey"}},
        ),
        (
            "ssh://git@git.example.com/models.git",
            {"sshPrivateKeySecret": {"name": "repo-credentials", "key": "ssh-privatekey"}},
        ),
    ],
)
def test_the_checkout_uses_the_git_secret_the_environment_names(
    repository: str, credentials: dict[str, Any]
) -> None:
    env = environment(PVC)
    assert env.argo is not None
    env = replace(env, argo=replace(env.argo, git_secret="repo-credentials"))
    workflow = render(environment=env, repository=repository)
    [code] = [a for a in templates(workflow)["train"]["inputs"]["artifacts"] if "git" in a]
    assert code["git"] == {"repo": repository, "revision": COMMIT, **credentials}
    for schema in SCHEMAS:
        assert validator(schema).is_valid(workflow), schema


def test_a_model_at_the_repository_root_runs_in_the_checkout_itself() -> None:
    model = replace(MODEL, source=Source(path=".", requirements="requirements.txt"))
    assert templates(render(model=model))["train"]["container"]["workingDir"] == REPO_DIR


def test_each_container_gets_the_step_contract() -> None:
    workflow = render()
    train = templates(workflow)["train"]
    env = env_of(train)
    assert env["FLYWHEEL_WORKDIR"] == "/flywheel/work" and env["FLYWHEEL_MODEL_DIR"] == "/flywheel/model"
    assert env["FLYWHEEL_METRICS"] == METRICS_PATH and env["MODE"] == "full"
    assert env["FLYWHEEL_DATA_IRIS"] == "sklearn://iris"
    assert env["FLYWHEEL_DATA_EXTRA_ROWS"] == f"{REPO_DIR}/specs/iris/data/extra.csv"
    [params, steplib, _code] = train["inputs"]["artifacts"]
    assert params["path"] == env["FLYWHEEL_PARAMS"] and json.loads(params["raw"]["data"]) == MODEL.params
    # the step library, on PYTHONPATH as on one machine, and where it writes the reference sample
    assert steplib["path"] == f"{env['PYTHONPATH']}/flywheel_reference.py"
    assert "def write(" in steplib["raw"]["data"]
    assert env["FLYWHEEL_REFERENCE_DATA"] == "/flywheel/work/reference-data"  # on the claim, brought home
    assert train["outputs"]["parameters"] == [
        {"name": "metrics", "valueFrom": {"path": METRICS_PATH, "default": "{}"}}
    ]
    run = f"runs/{workflow_name('42')}"
    assert train["container"]["volumeMounts"] == [
        {"name": "flywheel-artifacts", "mountPath": "/flywheel/work", "subPath": f"{run}/work"},
        {"name": "flywheel-artifacts", "mountPath": "/flywheel/model", "subPath": f"{run}/model"},
    ]
    assert workflow["spec"]["volumes"] == [
        {"name": "flywheel-artifacts", "persistentVolumeClaim": {"claimName": "flywheel-artifacts"}}
    ]


def test_with_a_baseline_the_steps_mount_productions_model_read_only() -> None:
    assert "FLYWHEEL_BASELINE_MODEL_DIR" not in env_of(templates(render())["train"])  # none: not set
    workflow = render(baseline=True)
    for name in ("train", "evaluate"):
        step = templates(workflow)[name]
        assert env_of(step)["FLYWHEEL_BASELINE_MODEL_DIR"] == "/flywheel/baseline"
        assert step["container"]["volumeMounts"][-1] == {
            "name": "flywheel-artifacts",
            "mountPath": "/flywheel/baseline",
            "subPath": f"runs/{workflow_name('42')}/baseline",
            "readOnly": True,
        }
    for schema in SCHEMAS:
        assert validator(schema).is_valid(workflow), schema


def test_with_s3_the_work_and_model_directories_go_round_through_the_bucket() -> None:
    workflow = render(S3)
    train = templates(workflow)["train"]
    env = env_of(train)
    work, model = train["outputs"]["artifacts"]
    assert (work["path"], model["path"]) == (env["FLYWHEEL_WORKDIR"], env["FLYWHEEL_MODEL_DIR"])
    assert work["archive"] == model["archive"] == {"none": {}}  # one object per file, under the key
    assert model["s3"] == {
        "bucket": "models",
        "key": f"flywheel/{workflow_name('42')}/model",
        "endpoint": "minio.minio:9000",
        "insecure": False,
        "accessKeySecret": {"name": "s3-credentials", "key": "accessKey"},
        "secretKeySecret": {"name": "s3-credentials", "key": "secretKey"},
    }
    assert work["s3"]["key"] == f"flywheel/{workflow_name('42')}/work"  # the reference sample is in it
    assert env["FLYWHEEL_REFERENCE_DATA"].startswith(env["FLYWHEEL_WORKDIR"] + "/")
    # each step loads what the steps before it saved (the first finds nothing: optional)
    inputs = {a["name"]: a for a in train["inputs"]["artifacts"]}
    assert list(inputs) == ["params", "steplib", "code", "work", "model"]
    assert inputs["work"]["s3"] == work["s3"] and inputs["model"]["s3"] == model["s3"]
    assert inputs["work"]["optional"] is inputs["model"]["optional"] is True
    # in directories of the pod's own, which exist before anything is loaded into them
    volumes = {v["name"]: v for v in workflow["spec"]["volumes"]}
    for mount in train["container"]["volumeMounts"]:
        assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}}
    assert {m["mountPath"] for m in train["container"]["volumeMounts"]} == {work["path"], model["path"]}

    assert "FLYWHEEL_BASELINE_MODEL_DIR" not in env
    with_baseline = templates(render(S3, baseline=True))["train"]
    baseline = with_baseline["inputs"]["artifacts"][-1]
    assert baseline["name"] == "baseline" and "optional" not in baseline  # the runner put it there
    assert baseline["path"] == env_of(with_baseline)["FLYWHEEL_BASELINE_MODEL_DIR"] == "/flywheel/baseline"
    assert baseline["s3"]["key"] == f"flywheel/{workflow_name('42')}/baseline"


def test_name_labels_and_the_cluster_settings() -> None:
    workflow = render()
    metadata, spec = workflow["metadata"], workflow["spec"]
    assert metadata["name"] == workflow_name("42") == "flywheel-run-42"
    assert metadata["namespace"] == "ml-pipelines"
    assert metadata["labels"] == {LABEL_MODEL: "iris", LABEL_RUN: "42", LABEL_CACHE_KEY: "c" * 63}
    assert metadata["annotations"] == {
        LABEL_CACHE_KEY: "c" * 64,
        "workflows.argoproj.io/pod-name-format": "v1",
    }
    assert spec["serviceAccountName"] == "flywheel-steps" and spec["parallelism"] == 3
    assert spec["podGC"] == {"strategy": "OnWorkflowSuccess"}
    assert spec["ttlStrategy"]["secondsAfterSuccess"] > 0 and spec["ttlStrategy"]["secondsAfterFailure"] > 0
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert render() == workflow  # the same run renders the same Workflow


@pytest.mark.parametrize("run_id", ["7", "Run_7", "x" * 80, "a.b"])
def test_workflow_names_are_valid_and_distinct(run_id: str) -> None:
    name = workflow_name(run_id)
    assert len(name) <= 63 and name[0].isalpha() and name[-1].isalnum()
    assert all(c.islower() or c.isdigit() or c == "-" for c in name)
    assert workflow_name(run_id) == name
    assert len({workflow_name(r) for r in ["Run_7", "run-7", "run_7"]}) == 3

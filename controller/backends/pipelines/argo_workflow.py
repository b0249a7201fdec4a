"""One run as one Argo Workflow (``argoproj.io/v1alpha1``), rendered as plain data; pure.

:func:`render_workflow` is what the argo runner (:mod:`.argo`) submits and
``flywheel manifests`` writes. The Workflow is a DAG with one task per step
(``depends`` from ``needs``); each step's template runs the step's ``run``
command in the model's image (its environment: base image and requirements),
on the model's code checked out from git at the run's commit — a ``git``
input artifact at :data:`REPO_DIR` (the repository the controller watches,
``revision`` the commit, credentials from the Secret ``pipeline.argo.git``
names) — in the model's source directory in it (:func:`source_dir_in_pod`),
with ``retryStrategy`` from its retries,
``activeDeadlineSeconds`` from its timeout (per attempt, as on one machine)
and its resources. The step contract is the embedded home's:

* ``FLYWHEEL_PARAMS``: the params, a raw input artifact at :data:`PARAMS_PATH`;
* ``FLYWHEEL_DATA_<NAME>``: a data input inside the model's code at its path
  in the checkout, any other by its URI;
* ``FLYWHEEL_WORKDIR`` and ``FLYWHEEL_MODEL_DIR``: ``/flywheel/work`` and
  ``/flywheel/model``, on the artifacts PersistentVolumeClaim (its
  ``runs/<workflow>/work`` and ``…/model``, mounted there), shared by the
  steps; with an S3 bucket both are the pod's own (``emptyDir``) and go
  round through the bucket: input artifacts of every step (optional: the
  first finds nothing) and its output artifacts (``archive: none``, one
  object per file under ``<prefix>/<workflow>/work`` and ``…/model``), so a
  step finds what the steps before it wrote (steps running side by side each
  add their files; a file both write is the last one's);
* ``FLYWHEEL_METRICS``: a file returned as the output parameter ``metrics``
  (``{}`` when the step wrote none), which the runner merges.
* ``FLYWHEEL_BASELINE_MODEL_DIR``: production's model, when there is one, at
  :data:`POD_BASELINE_DIR`: mounted read-only from the claim's
  ``runs/<workflow>/baseline``, or an input artifact from the bucket's
  ``<workflow>/baseline``, where the runner puts it before submitting.

The name is derived from the run id (:func:`workflow_name`), so a second
submission of the same run is refused by the server instead of running twice;
the labels name the model, the run and the cache key (:data:`LABEL_RUN` finds
a run's Workflow again after a restart).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import steplib
from controller.backends.images import ImageRequest
from controller.backends.local.processes import uses_shell
from controller.backends.local.venvs import model_environment
from controller.backends.objects import object_key
from controller.backends.pipelines import RunRequest
from controller.specs.types import Environment, Model, PvcArtifacts, S3Artifacts, Step

__all__ = [
    "LABEL_CACHE_KEY",
    "LABEL_MODEL",
    "LABEL_RUN",
    "METRICS_PATH",
    "PARAMS_PATH",
    "REPO_DIR",
    "WorkflowInputs",
    "baseline_path",
    "bucket_key",
    "image_request",
    "label_value",
    "render_workflow",
    "source_dir_in_pod",
    "task_name",
    "workflow_inputs",
    "workflow_name",
]

API_VERSION = "argoproj.io/v1alpha1"
REPO_DIR = "/flywheel/repo"  # where each pod has the repository, checked out at the run's commit
PARAMS_PATH = "/flywheel/params.json"
METRICS_PATH = "/flywheel/metrics.json"
POD_WORKDIR = "/flywheel/work"
POD_MODEL_DIR = "/flywheel/model"
POD_BASELINE_DIR = "/flywheel/baseline"  # FLYWHEEL_BASELINE_MODEL_DIR: production's model, read-only
STEPLIB_DIR = "/flywheel/lib"  # the step library (flywheel_reference), a raw input artifact on PYTHONPATH
REFERENCE_PATH = f"{POD_WORKDIR}/reference-data"  # FLYWHEEL_REFERENCE_DATA: on the claim with the workdir
_STEPLIB = Path(steplib.__file__).parent / "flywheel_reference.py"
LABEL_MODEL = "flywheel.dev/model"
LABEL_RUN = "flywheel.dev/run"
LABEL_CACHE_KEY = "flywheel.dev/cache-key"
ANNOTATION_CACHE_KEY = "flywheel.dev/cache-key"
POD_NAME_FORMAT = "workflows.argoproj.io/pod-name-format"
DEFAULT_NAMESPACE = "default"
SUCCESS_TTL_SECONDS = 24 * 3600
FAILURE_TTL_SECONDS = 7 * 24 * 3600
_VOLUME = "flywheel-artifacts"
_S3_VOLUMES = {"work": "flywheel-work", "model": "flywheel-model"}  # what each step loads and saves
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
_SCP_LIKE = re.compile(r"^[\w.+-]+@[\w.-]+:")  # git@github.com:owner/name.git


def _is_ssh(repository: str) -> bool:
    return repository.startswith("ssh://") or bool(_SCP_LIKE.match(repository))


def workflow_name(run_id: str) -> str:
    """The Workflow's name for run ``run_id``: the same every time, a valid Kubernetes name."""
    cleaned = _NAME_CHARS.sub("-", run_id.lower()).strip("-")
    name = f"flywheel-run-{cleaned}" if cleaned else "flywheel-run"
    if len(name) > 63 or cleaned != run_id:  # keep distinct ids distinct
        suffix = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{suffix}"
    return name


def task_name(step: str) -> str:
    """The DAG task (and template) name of a step: Argo's names allow no '_' or '.'."""
    cleaned = re.sub(r"[^a-zA-Z0-9-]+", "-", step).strip("-") or "step"
    if cleaned != step:
        cleaned = f"{cleaned[:40]}-{hashlib.sha256(step.encode()).hexdigest()[:6]}"
    return cleaned


def label_value(value: str) -> str:
    """``value`` as a valid Kubernetes label value (at most 63 characters of ``[A-Za-z0-9_.-]``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63]
    return cleaned.strip("-_.") or "none"


@dataclass(frozen=True, kw_only=True)
class WorkflowInputs:
    """What a Workflow is made of: the run, the model, its image, code and inputs, and where it runs.

    ``repository`` is the git repository the steps check the code out of (the
    one the controller watches: a URL, or a path for tests and one machine)
    and ``commit`` the run's commit. ``source_dir`` is where the controller
    exported the model's code: a data input under it is given to the steps at
    its place in the checkout (:func:`source_dir_in_pod`).
    """

    run_id: str
    model: Model
    environment: Environment
    image: str
    repository: str
    commit: str
    params: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    source_dir: Path | None = None
    cache_key: str | None = None
    max_parallel: int = 2
    baseline: bool = False  # the runner put production's model where the steps read it (claim or bucket)

    @property
    def name(self) -> str:
        return workflow_name(self.run_id)

    @property
    def namespace(self) -> str:
        return self.environment.pipeline_namespace or DEFAULT_NAMESPACE


def image_request(request: RunRequest, environment: Environment) -> ImageRequest:
    """The image ``request``'s steps run in: its environment only (the code comes from git).

    Raises ``VenvBuildError`` when the model's requirements cannot be read
    from its exported source directory.
    """
    assert environment.images is not None
    python = model_environment(request.model, request.source_dir)
    dockerfile = request.model.source.dockerfile
    return ImageRequest(
        model=request.model.name,
        environment_hash=request.environment_hash or python.hash,
        source_dir=request.source_dir,
        python=python,
        dockerfile=None
        if dockerfile is None
        else Path(dockerfile).relative_to(request.model.source.path or ".").as_posix(),
        images=environment.images,
        namespace=environment.pipeline_namespace,
    )


def workflow_inputs(
    request: RunRequest, environment: Environment, *, image: str, repository: str
) -> WorkflowInputs:
    """What ``request``'s Workflow is made of, its steps in ``image`` on the code of ``repository``."""
    assert request.commit is not None
    return WorkflowInputs(
        run_id=request.run_id,
        model=request.model,
        environment=environment,
        image=image,
        repository=repository,
        commit=request.commit,
        params=request.params,
        data=request.data,
        source_dir=request.source_dir,
        cache_key=request.cache_key,
        max_parallel=request.max_parallel,
        baseline=request.baseline_model_dir is not None,
    )


def render_workflow(inputs: WorkflowInputs) -> dict[str, Any]:
    """The Workflow of one run, as the JSON the Argo Server takes (``metadata``, ``spec``)."""
    model, env = inputs.model, inputs.environment
    name = inputs.name
    labels = {LABEL_MODEL: model.name, LABEL_RUN: label_value(inputs.run_id)}
    annotations = {POD_NAME_FORMAT: "v1"}  # pods named after their node id, which the runner asks logs of
    if inputs.cache_key:
        labels[LABEL_CACHE_KEY] = label_value(inputs.cache_key)
        annotations[ANNOTATION_CACHE_KEY] = inputs.cache_key
    spec: dict[str, Any] = {
        "entrypoint": "pipeline",
        "parallelism": max(1, inputs.max_parallel),
        "podGC": {"strategy": "OnWorkflowSuccess"},
        "ttlStrategy": {
            "secondsAfterSuccess": SUCCESS_TTL_SECONDS,
            "secondsAfterFailure": FAILURE_TTL_SECONDS,
        },
        "podMetadata": {"labels": dict(labels)},
        "templates": [_dag(model), *(_template(step, inputs) for step in model.steps)],
    }
    if env.argo is not None and env.argo.service_account:
        spec["serviceAccountName"] = env.argo.service_account
    if isinstance(env.artifacts, PvcArtifacts):
        spec["volumes"] = [
            {"name": _VOLUME, "persistentVolumeClaim": {"claimName": env.artifacts.claim_name}}
        ]
    elif isinstance(env.artifacts, S3Artifacts):  # the pod's own directories, filled from the bucket
        spec["volumes"] = [{"name": name, "emptyDir": {}} for name in _S3_VOLUMES.values()]
    if env.images is not None and env.images.push_secret:
        spec["imagePullSecrets"] = [{"name": env.images.push_secret}]
    metadata: dict[str, Any] = {"name": name, "namespace": inputs.namespace, "labels": labels}
    metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": "Workflow", "metadata": metadata, "spec": spec}


def _dag(model: Model) -> dict[str, Any]:
    tasks = []
    for step in model.steps:
        task: dict[str, Any] = {"name": task_name(step.name), "template": task_name(step.name)}
        if step.needs:
            task["depends"] = " && ".join(task_name(need) for need in step.needs)
        tasks.append(task)
    return {"name": "pipeline", "dag": {"tasks": tasks}}


def run_paths(name: str) -> tuple[str, str]:
    """(work directory, model directory) of Workflow ``name`` on the artifacts claim, relative to its root."""
    return f"runs/{name}/work", f"runs/{name}/model"


def baseline_path(name: str) -> str:
    """Where the runner copies production's model for Workflow ``name``, relative to the claim's root."""
    return f"runs/{name}/baseline"


def source_dir_in_pod(model: Model) -> str:
    """Where a pod has the model's code: its ``source.path`` in the checkout at :data:`REPO_DIR`."""
    path = posixpath.normpath(posixpath.join(REPO_DIR, model.source.path.strip("/")))
    return path if path.startswith(REPO_DIR) else REPO_DIR  # the spec keeps the path inside the repository


def _code_artifact(inputs: WorkflowInputs) -> dict[str, Any]:
    """The ``git`` input artifact that checks the repository out at the run's commit."""
    git: dict[str, Any] = {"repo": inputs.repository, "revision": inputs.commit}
    argo = inputs.environment.argo
    secret = argo.git_secret if argo is not None else None
    if secret:
        if _is_ssh(inputs.repository):  # a kubernetes.io/ssh-auth Secret
            git["sshPrivateKeySecret"] = {"name": secret, "key": "ssh-privatekey"}
        else:  # a kubernetes.io/basic-auth Secret (a token as the password for https)
            git["usernameSecret"] = {"name": secret, "key": "username"}
            git["passwordSecret"] = {"name": secret, "key": "password"}
    return {"name": "code", "path": REPO_DIR, "git": git}


def _template(step: Step, inputs: WorkflowInputs) -> dict[str, Any]:
    workdir, model_dir = POD_WORKDIR, POD_MODEL_DIR
    contract = {
        "FLYWHEEL_PARAMS": PARAMS_PATH,
        "FLYWHEEL_WORKDIR": workdir,
        "FLYWHEEL_MODEL_DIR": model_dir,
        "FLYWHEEL_METRICS": METRICS_PATH,
        "FLYWHEEL_REFERENCE_DATA": REFERENCE_PATH,
        "PYTHONPATH": STEPLIB_DIR,  # as on one machine: the step library, nothing of the image's own
    }
    code_dir = source_dir_in_pod(inputs.model)
    for item in inputs.model.data:
        contract[item.env_name] = _in_pod(inputs.data.get(item.name, item.uri), inputs.source_dir, code_dir)
    env = {**dict(step.env), **contract}  # a step's own env first; the contract's variables win
    container: dict[str, Any] = {
        "image": inputs.image,
        "command": ["/bin/sh", "-c", step.run] if uses_shell(step.run) else shlex.split(step.run),
        "workingDir": code_dir,
    }
    resources = _resources(step)
    if resources:
        container["resources"] = resources
    artifacts = inputs.environment.artifacts
    if isinstance(artifacts, PvcArtifacts):
        # the claim's run directories, mounted where the steps see them (subPath creates them)
        work_path, model_path = run_paths(inputs.name)
        container["volumeMounts"] = [
            {"name": _VOLUME, "mountPath": POD_WORKDIR, "subPath": work_path},
            {"name": _VOLUME, "mountPath": POD_MODEL_DIR, "subPath": model_path},
        ]
        if inputs.baseline:
            container["volumeMounts"].append(
                {
                    "name": _VOLUME,
                    "mountPath": POD_BASELINE_DIR,
                    "subPath": baseline_path(inputs.name),
                    "readOnly": True,
                }
            )
            env["FLYWHEEL_BASELINE_MODEL_DIR"] = POD_BASELINE_DIR
    input_artifacts: list[dict[str, Any]] = [
        {
            "name": "params",
            "path": PARAMS_PATH,
            "raw": {"data": json.dumps(dict(inputs.params), sort_keys=True)},
        },
        {
            "name": "steplib",
            "path": f"{STEPLIB_DIR}/{_STEPLIB.name}",
            "raw": {"data": _STEPLIB.read_text(encoding="utf-8")},
        },
        _code_artifact(inputs),
    ]
    outputs: dict[str, Any] = {
        "parameters": [{"name": "metrics", "valueFrom": {"path": METRICS_PATH, "default": "{}"}}]
    }
    if isinstance(artifacts, S3Artifacts):
        # the work and model directories go round through the bucket: each step loads what the steps
        # before it saved (nothing yet: optional) and saves them back, as files under their keys
        paths = {"work": workdir, "model": model_dir}
        container["volumeMounts"] = [
            {"name": _S3_VOLUMES[what], "mountPath": paths[what]} for what in ("work", "model")
        ]
        outputs["artifacts"] = []
        for what in ("work", "model"):
            location = _s3(artifacts, f"{inputs.name}/{what}")
            input_artifacts.append({"name": what, "path": paths[what], "optional": True, "s3": location})
            outputs["artifacts"].append(
                {"name": what, "path": paths[what], "optional": True, "archive": {"none": {}}, "s3": location}
            )
        if inputs.baseline:
            baseline = _s3(artifacts, f"{inputs.name}/baseline")
            input_artifacts.append({"name": "baseline", "path": POD_BASELINE_DIR, "s3": baseline})
            env["FLYWHEEL_BASELINE_MODEL_DIR"] = POD_BASELINE_DIR
    container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    template: dict[str, Any] = {
        "name": task_name(step.name),
        "inputs": {"artifacts": input_artifacts},
        "outputs": outputs,
        "container": container,
        "activeDeadlineSeconds": str(
            max(1, round(step.timeout_seconds))
        ),  # IntOrString; the SDK types it str
    }
    if step.retries:
        template["retryStrategy"] = {"limit": str(step.retries), "retryPolicy": "Always"}
    return template


def _resources(step: Step) -> dict[str, Any]:
    wanted = step.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if wanted.cpu:
        requests["cpu"] = wanted.cpu
    if wanted.memory:
        requests["memory"] = limits["memory"] = wanted.memory
    if wanted.gpu:
        limits["nvidia.com/gpu"] = str(wanted.gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def bucket_key(artifacts: S3Artifacts, relative: str) -> str:
    """The key of ``relative`` (``<workflow>/work``, ``…/model``, ``…/baseline``) in the bucket."""
    return object_key(artifacts, relative)


def _s3(artifacts: S3Artifacts, key: str) -> dict[str, Any]:
    location: dict[str, Any] = {"bucket": artifacts.bucket, "key": bucket_key(artifacts, key)}
    if artifacts.endpoint:
        secure = artifacts.endpoint.startswith("https://")
        location["endpoint"] = artifacts.endpoint.split("://", 1)[1].rstrip("/")
        location["insecure"] = not secure
    if artifacts.secret:
        location["accessKeySecret"] = {"name": artifacts.secret, "key": "accessKey"}
        location["secretKeySecret"] = {"name": artifacts.secret, "key": "secretKey"}
    return location


def _in_pod(value: str, source_dir: Path | None, code_dir: str) -> str:
    """A data input's path as the pod sees it: a path under the model's code moves into the checkout."""
    if source_dir is None or not value.startswith("/"):
        return value
    try:
        relative = Path(value).relative_to(source_dir)
    except ValueError:
        return value
    return f"{code_dir}/{relative.as_posix()}" if relative.parts else code_dir

"""The InferenceService a model version is served by on KServe: names, labels and the predictor.

:mod:`.kserve` renders every object it writes here, and ``flywheel
manifests`` can render the same without a cluster. One InferenceService
(``serving.kserve.io/v1beta1``) serves one model in one namespace; its
predictor is the version that is rolling out or rolled out:

* ``sklearn``/``xgboost``: KServe's MLServer runtime (``kserve-mlserver``)
  on the Open Inference Protocol (``protocolVersion: v2``), with the model's
  ``modelFormat`` and ``storageUri`` on the Environment's artifact store (see
  :func:`storage_uri`): the claim, ``pvc://<claim>/models/<model>/<version>``,
  or the bucket, ``s3://<bucket>/<prefix>/models/<model>/<version>/``;
* ``custom``: one container in the model's own image running the spec's
  command, with the same ``storageUri`` mounted by KServe's storage
  initializer at ``/mnt/models``.

Every predictor runs as the Environment's ``serving.serviceAccountName``
when it names one (``predictor.serviceAccountName``): the ServiceAccount
whose Secret gives KServe's storage initializer the bucket's credentials.

The object's labels name the model; its annotations the version of the
predictor (:data:`VERSION_ANNOTATION`), the version rolled out before it and
that version's predictor (for a rollback), and which revision serves which
version once KServe has reported it (:data:`REVISIONS_ANNOTATION`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from controller.backends.objects import object_key
from controller.backends.serving import ServedVersion, ServingError
from controller.specs.types import Environment, PvcArtifacts, S3Artifacts

__all__ = [
    "API_VERSION",
    "DEPLOYMENT_MODE_ANNOTATION",
    "ENVIRONMENT_LABEL",
    "GROUP",
    "MODEL_LABEL",
    "PLURAL",
    "PREVIOUS_PREDICTOR_ANNOTATION",
    "PREVIOUS_VERSION_ANNOTATION",
    "RAW_MODES",
    "REVISIONS_ANNOTATION",
    "VERSION",
    "VERSION_ANNOTATION",
    "artifact_path",
    "inference_service",
    "namespace_of",
    "predictor",
    "service_name",
    "storage_uri",
]

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "inferenceservices"
KIND = "InferenceService"
MLSERVER_RUNTIME = "kserve-mlserver"
CUSTOM_CONTAINER = "kserve-container"
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
MODEL_LABEL = "flywheel.dev/model"
VERSION_LABEL = "flywheel.dev/version"
ENVIRONMENT_LABEL = "flywheel.dev/environment"
VERSION_ANNOTATION = "flywheel.dev/version"  # the predictor's version
PREVIOUS_VERSION_ANNOTATION = "flywheel.dev/previous-version"  # rolled out before it
PREVIOUS_PREDICTOR_ANNOTATION = "flywheel.dev/previous-predictor"  # its predictor, JSON
REVISIONS_ANNOTATION = "flywheel.dev/revisions"  # revision name -> version, JSON
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
RAW_MODES = frozenset({"RawDeployment", "Standard"})  # modes that ignore canaryTrafficPercent
BUILTIN_FORMATS = frozenset({"sklearn", "xgboost"})
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
MAX_NAME = 45  # KServe derives longer names (<name>-predictor-00001-deployment...) from it


def service_name(model: str) -> str:
    """The InferenceService's name for ``model``: a DNS-1035 label KServe can derive its own names from."""
    name = _NOT_DNS.sub("-", model.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}"
    return name[:MAX_NAME].rstrip("-")


def namespace_of(environment: Environment) -> str:
    """Where ``environment``'s InferenceServices live: ``serving.namespace``, else the pipelines'."""
    return environment.serving_namespace or environment.namespace or "default"


def artifact_path(model: str, version: str) -> str:
    """Where a version's model directory lives on the artifacts claim, relative to its root."""
    return f"models/{model}/{version}"


def storage_uri(environment: Environment, model: str, version: str) -> str:
    """The version's artifact as KServe's storage initializer reads it, on the Environment's artifact store.

    On the claim ``pvc://<claim>/models/<model>/<version>``; in the bucket
    ``s3://<bucket>/<prefix>/models/<model>/<version>/``: the trailing slash
    matters, as the initializer downloads every key that starts with the
    URI's path, and ``…/v1`` would take ``…/v10/``'s files too.
    """
    artifacts = environment.artifacts
    if isinstance(artifacts, PvcArtifacts):
        return f"pvc://{artifacts.claim_name}/{artifact_path(model, version)}"
    if isinstance(artifacts, S3Artifacts):
        return f"s3://{artifacts.bucket}/{object_key(artifacts, artifact_path(model, version))}/"
    raise ServingError(
        f"environment {environment.name!r}: the kserve backend serves models from the environment's "
        "artifact store, and it names none (artifacts.pvc or artifacts.s3)"
    )


def predictor(
    version: ServedVersion, *, uri: str, image: str | None = None, service_account: str | None = None
) -> dict[str, Any]:
    """The predictor that serves ``version`` from ``uri`` (and, for a custom server, ``image``).

    ``service_account`` is the predictor's ``serviceAccountName`` (the
    Environment's ``serving.serviceAccountName``): KServe's storage
    initializer reads a bucket with the credentials of its Secret.
    """
    body = _predictor(version, uri=uri, image=image)
    if service_account is not None:
        body["serviceAccountName"] = service_account
    return body


def _predictor(version: ServedVersion, *, uri: str, image: str | None) -> dict[str, Any]:
    runtime = version.serving.runtime
    labels = {MODEL_LABEL: version.model, VERSION_LABEL: version.version}
    if runtime in BUILTIN_FORMATS:
        return {
            "labels": labels,
            "model": {
                "modelFormat": {"name": runtime},
                "protocolVersion": "v2",
                "runtime": MLSERVER_RUNTIME,
                "storageUri": uri,
            },
        }
    if runtime == "custom":
        if image is None or not version.serving.command:
            raise ServingError(
                f"{version.model} {version.version}: a custom server on KServe needs the model's image "
                "and serving.command"
            )
        container = {
            "name": CUSTOM_CONTAINER,
            "image": image,
            "command": ["/bin/sh", "-c", version.serving.command],
            "env": [
                {"name": "STORAGE_URI", "value": uri},
                {"name": "FLYWHEEL_MODEL_DIR", "value": MODEL_MOUNT},
                {"name": "FLYWHEEL_MODEL_NAME", "value": service_name(version.model)},  # as in its URL
                {"name": "FLYWHEEL_MODEL_VERSION", "value": version.version},
            ],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        }
        return {"labels": labels, "containers": [container]}
    raise ServingError(f"{version.model} {version.version}: KServe has no runtime for {runtime!r} here")


def inference_service(
    *,
    environment: Environment,
    version: ServedVersion,
    spec_predictor: Mapping[str, Any],
    canary_percent: int | None = None,
    previous: tuple[str, Mapping[str, Any]] | None = None,
    revisions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole InferenceService Flywheel applies: ``spec_predictor`` serving ``version``.

    ``canary_percent`` is the predictor's ``canaryTrafficPercent`` (None: not
    set, the version gets all traffic once ready); ``previous`` the version
    rolled out before and its predictor, kept for a rollback.
    """
    annotations = {VERSION_ANNOTATION: version.version}
    if previous is not None:
        annotations[PREVIOUS_VERSION_ANNOTATION] = previous[0]
        annotations[PREVIOUS_PREDICTOR_ANNOTATION] = json.dumps(dict(previous[1]), sort_keys=True)
    if revisions:
        annotations[REVISIONS_ANNOTATION] = json.dumps(dict(revisions), sort_keys=True)
    body_predictor = dict(spec_predictor)
    if canary_percent is not None:
        body_predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": service_name(version.model),
            "namespace": namespace_of(environment),
            "labels": {
                "app.kubernetes.io/managed-by": "flywheel",
                MODEL_LABEL: version.model,
                ENVIRONMENT_LABEL: environment.name,
            },
            "annotations": annotations,
        },
        "spec": {"predictor": body_predictor},
    }

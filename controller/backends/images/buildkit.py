"""Images built in the cluster: a BuildKit rootless Job per missing tag, created through ``kubernetes``.

:class:`BuildKitImages` is the cluster home's :class:`~controller.backends.images.ImageBuilder`.
:meth:`~BuildKitImages.ensure` asks the registry for the tag first
(:mod:`.registry`) and builds only when it is missing: it creates a ConfigMap
holding the build context (:func:`.dockerfile.archive`, a reproducible
``tar.gz``) and a ``batch/v1`` Job whose init container unpacks it into an
``emptyDir`` and whose ``buildkit`` container runs ``buildctl-daemonless.sh
build --frontend dockerfile.v0`` from ``moby/buildkit:rootless`` with
``--output type=image,name=<ref>,push=true``. The securityContext is the one
BuildKit's rootless docs ask for (seccomp and AppArmor ``Unconfined``, user
and group 1000) with ``--oci-worker-no-process-sandbox``; the Environment's
``images.pushSecret`` (a ``kubernetes.io/dockerconfigjson`` Secret) is
mounted as the builder's docker config. Both objects are named from the
model and tag, so creating them twice is harmless (409: the existing Job is
followed). The Job is followed by a watch (falling back to ``get``) until it
completes or fails; the builder pod's log is kept in ``logs_dir`` like a
step's log, and a failure's tail goes into the error. The digest is the
registry's after the push, or the log's ``exporting manifest sha256:`` line.
:meth:`~BuildKitImages.manifests` renders the same objects without a cluster.
The composition root constructs it for an Environment whose images are built
in the cluster.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from controller.backends.images import BuiltImage, ImageError, ImageRequest
from controller.backends.images.dockerfile import DOCKERFILE, archive
from controller.backends.images.registry import Registries, Registry
from controller.backends.kube import KubeConfigError
from controller.backends.kube import kube_client as shared_kube_client
from controller.clock import Clock
from controller.specs.types import ImagesSpec

__all__ = ["BUILDKIT_IMAGE", "BuildKitImages", "job_name", "kube_client", "manifest_digest"]

BUILDKIT_IMAGE = "moby/buildkit:rootless"
CONTEXT_KEY = "context.tar.gz"
CONFIGMAP_LIMIT = 1024 * 1024  # Kubernetes refuses a ConfigMap over 1 MiB
BUILDER_UID = 1000  # the rootless image's user; changing it needs another image
_MANIFEST = re.compile(r"exporting manifest (?:list )?(sha256:[0-9a-f]{64})")
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
LOG_TAIL_LINES = 20
MODEL_LABEL = "flywheel.dev/model"
TAG_LABEL = "flywheel.dev/image-tag"
IMAGE_ANNOTATION = "flywheel.dev/image"


def job_name(model: str, tag: str) -> str:
    """The build's Job and ConfigMap name, ``build-<model>-<tag prefix>``: a DNS label of <= 63 characters."""
    slug = _NAME_CHARS.sub("-", model.lower()).strip("-")[:28] or "model"
    suffix = _NAME_CHARS.sub("-", tag.lower()).strip("-")[:28]
    return f"build-{slug}-{suffix}".rstrip("-")


def kube_client(kubeconfig: Path | None) -> k8s.ApiClient:
    """:func:`controller.backends.kube.kube_client`, raising :class:`ImageError` saying which and why."""
    try:
        return shared_kube_client(kubeconfig)
    except KubeConfigError as error:
        raise ImageError(f"no Kubernetes API to build images in: {error}") from None


def manifest_digest(log: str) -> str | None:
    """The pushed manifest's digest in a BuildKit log: the last ``exporting manifest [list] sha256:`` line."""
    found = _MANIFEST.findall(log)
    return found[-1] if found else None


def _labels(request: ImageRequest) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "flywheel",
        "app.kubernetes.io/component": "image-build",
        MODEL_LABEL: request.model,
        TAG_LABEL: request.tag[:63],
    }


class BuildKitImages:
    """Builds missing images with BuildKit Jobs; asks the registry before and after.

    A build runs in the namespace its request names (the environment's
    pipeline namespace), else in ``namespace``.
    """

    def __init__(
        self,
        *,
        api: k8s.ApiClient | None,
        namespace: str,
        clock: Clock,
        logs_dir: Path,
        docker_config: Mapping[str, Any] | None = None,
        registry: Callable[[ImagesSpec], Registry] | None = None,
        timeout: float = 3600.0,
        watch_seconds: int = 60,
        buildkit_image: str = BUILDKIT_IMAGE,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.clock = clock
        self.logs_dir = logs_dir
        self.docker_config = docker_config or {}
        self.timeout = timeout
        self.watch_seconds = watch_seconds
        self.buildkit_image = buildkit_image
        self._registries = Registries(self.docker_config)
        self._registry = registry or self._registries.get

    def namespace_of(self, request: ImageRequest) -> str:
        """Where ``request``'s build runs: the namespace it names (its pipeline's), else this builder's."""
        return request.namespace or self.namespace

    def close(self) -> None:
        """Close the registry connections this builder opened (not the Kubernetes API, its caller's)."""
        self._registries.close()

    # ------------------------------------------------------------------ rendering

    def manifests(self, request: ImageRequest) -> list[dict[str, Any]]:
        """The ConfigMap holding the build context and the Job that builds and pushes ``request``."""
        return [self._config_map(request), self._job(request)]

    def _config_map(self, request: ImageRequest) -> dict[str, Any]:
        context = archive(request)
        if len(context) > CONFIGMAP_LIMIT:
            raise ImageError(
                f"model {request.model}: the build context is {len(context)} bytes compressed, over a "
                f"ConfigMap's {CONFIGMAP_LIMIT}; keep data and large files out of the model's code directory"
            )
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": job_name(request.model, request.tag),
                "namespace": self.namespace_of(request),
                "labels": _labels(request),
            },
            "binaryData": {CONTEXT_KEY: base64.b64encode(context).decode()},
        }

    def _job(self, request: ImageRequest) -> dict[str, Any]:
        name = job_name(request.model, request.tag)
        output = f"type=image,name={request.reference},push=true"
        if request.images.insecure:
            output += ",registry.insecure=true"
        builder_user = {"runAsUser": BUILDER_UID, "runAsGroup": BUILDER_UID}
        mounts = [
            {"name": "workspace", "mountPath": "/workspace", "readOnly": True},
            # BuildKit's state in an emptyDir, as the rootless docs advise (the image's VOLUME may be nosuid)
            {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"},
        ]
        volumes: list[dict[str, Any]] = [
            {"name": "context", "configMap": {"name": name}},
            {"name": "workspace", "emptyDir": {}},
            {"name": "buildkitd", "emptyDir": {}},
        ]
        env = [{"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"}]
        if request.images.push_secret:
            mounts.append({"name": "docker-config", "mountPath": "/home/user/.docker", "readOnly": True})
            volumes.append(
                {
                    "name": "docker-config",
                    "secret": {
                        "secretName": request.images.push_secret,
                        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    },
                }
            )
            env.append({"name": "DOCKER_CONFIG", "value": "/home/user/.docker"})
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": self.namespace_of(request),
                "labels": _labels(request),
                "annotations": {
                    IMAGE_ANNOTATION: request.reference
                },  # a label holds 63 characters, a tag 128
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": int(self.timeout),
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": _labels(request)},
                    "spec": {
                        "restartPolicy": "Never",
                        "initContainers": [
                            {
                                "name": "context",
                                "image": self.buildkit_image,
                                "command": ["tar", "-xzf", f"/context/{CONTEXT_KEY}", "-C", "/workspace"],
                                "securityContext": dict(builder_user),
                                "volumeMounts": [
                                    {"name": "context", "mountPath": "/context", "readOnly": True},
                                    {"name": "workspace", "mountPath": "/workspace"},
                                ],
                            }
                        ],
                        "containers": [
                            {
                                "name": "buildkit",
                                "image": self.buildkit_image,
                                "command": ["buildctl-daemonless.sh"],
                                "args": [
                                    "build",
                                    "--frontend",
                                    "dockerfile.v0",
                                    "--local",
                                    "context=/workspace",
                                    "--local",
                                    "dockerfile=/workspace",
                                    "--opt",
                                    f"filename={DOCKERFILE}",
                                    "--output",
                                    output,
                                ],
                                "env": env,
                                "securityContext": {
                                    "seccompProfile": {"type": "Unconfined"},
                                    "appArmorProfile": {"type": "Unconfined"},
                                    **builder_user,
                                },
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
                    },
                },
            },
        }

    # ------------------------------------------------------------------ building

    def ensure(self, request: ImageRequest) -> BuiltImage:
        """The registry's image when it has the tag; else a BuildKit Job builds and pushes it now."""
        registry = self._registry(request.images)
        name = f"{request.images.repository.strip('/')}/{request.model}"
        digest = registry.digest(name, request.tag)
        if digest is not None:
            return BuiltImage(reference=request.reference, digest=digest, built=False)
        log = self.build(request)
        digest = registry.digest(name, request.tag) or manifest_digest(log)
        return BuiltImage(reference=request.reference, digest=digest, built=True)

    def build(self, request: ImageRequest) -> str:
        """Create (or find) the build's ConfigMap and Job and follow the Job to its end; the pod's log."""
        if self.api is None:
            raise ImageError(f"image {request.reference}: no Kubernetes API is configured to build it")
        config_map, job = self.manifests(request)  # the client sends dicts as they are
        name = job["metadata"]["name"]
        core, batch = k8s.CoreV1Api(self.api), k8s.BatchV1Api(self.api)
        namespace = self.namespace_of(request)
        where = f"image {request.reference}: build job {namespace}/{name}"
        try:
            self._create(lambda: core.create_namespaced_config_map(namespace, cast(Any, config_map)))
            self._create(lambda: batch.create_namespaced_job(namespace, cast(Any, job)))
            succeeded = self._follow(batch, namespace, name, where)
            log = self._log(core, namespace, name)
        except ApiException as error:
            raise ImageError(f"{where}: Kubernetes API {error.status} {error.reason}") from None
        except OSError as error:  # urllib3's connection errors are OSErrors
            raise ImageError(f"{where}: Kubernetes API unreachable: {error}") from None
        log_path = self.logs_dir / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log, encoding="utf-8")
        if not succeeded:
            tail = "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
            raise ImageError(f"{where} failed (log: {log_path})\n{tail}")
        return log

    @staticmethod
    def _create(create: Callable[[], object]) -> None:
        try:
            create()
        except ApiException as error:
            if error.status != 409:  # already there: the same name is the same build
                raise

    def _follow(self, batch: k8s.BatchV1Api, namespace: str, name: str, where: str) -> bool:
        """Whether the Job succeeded, once it has finished; a watch resumed from the last version seen."""
        deadline = self.clock.monotonic() + self.timeout
        while True:
            job = batch.read_namespaced_job(name, namespace)
            outcome = _finished(job)
            if outcome is not None:
                return outcome
            if self.clock.monotonic() >= deadline:
                raise ImageError(f"{where}: not finished after {self.timeout:g}s")
            watcher = watch.Watch()  # type: ignore[no-untyped-call]
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                batch.list_namespaced_job,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=job.metadata.resource_version if job.metadata else None,
                timeout_seconds=self.watch_seconds,
            ):
                outcome = _finished(event["object"])
                if outcome is not None:
                    watcher.stop()  # type: ignore[no-untyped-call]
                    return outcome

    def _log(self, core: k8s.CoreV1Api, namespace: str, name: str) -> str:
        pods = [
            pod.metadata
            for pod in core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            if pod.metadata and pod.metadata.name
        ]
        if not pods:
            return ""
        newest = max(pods, key=lambda metadata: str(metadata.creation_timestamp or ""))
        # not preloaded: the client would parse a log that happens to be JSON
        answer: Any = core.read_namespaced_pod_log(
            str(newest.name), namespace, container="buildkit", _preload_content=False
        )
        return bytes(answer.data).decode("utf-8", errors="replace")


def _finished(job: Any) -> bool | None:
    """``True`` when a Job completed, ``False`` when it failed, ``None`` while it runs."""
    status = getattr(job, "status", None)
    for condition in getattr(status, "conditions", None) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return bool(condition.type == "Complete")
    if status is not None and status.succeeded:
        return True
    if status is not None and status.failed:
        return False
    return None

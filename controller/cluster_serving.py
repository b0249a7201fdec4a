"""The composition root's part for KServe: the kserve serving backend and the revisions analysis reads.

:func:`controller.app.build_controller` calls :func:`kserve_backends` for the
serving backends this controller has by name (``kserve`` only when
``FLYWHEEL_KSERVE_KUBECONFIG`` says how to reach Kubernetes) and gives the
Prometheus metrics source :func:`revision_lookup`, so a check on a version
served by KServe reads the metrics of the revision serving it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controller.backends.images import image_reference
from controller.backends.metrics.prometheus import Revision, RevisionLookup
from controller.backends.serving import ServedVersion, ServingBackend
from controller.backends.serving.kserve import KServeServing
from controller.backends.serving.kserve_spec import namespace_of
from controller.clock import Clock
from controller.settings import ArgoSettings, KServeSettings, SettingsError
from controller.specs.types import Catalog, Environment, PvcArtifacts

__all__ = ["kserve_backends", "revision_lookup"]


def kubernetes_api(settings: KServeSettings) -> k8s.ApiClient:
    """A ``kubernetes`` API client as ``settings.kubeconfig`` says; :class:`SettingsError` if it cannot."""
    configuration = k8s.Configuration()
    try:
        if settings.kubeconfig == "in-cluster":
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration
            )
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise SettingsError(f"FLYWHEEL_KSERVE_KUBECONFIG={settings.kubeconfig}: {exc}") from None
    return k8s.ApiClient(configuration)


def _image_of(environment: Environment, version: ServedVersion) -> str | None:
    if environment.images is None or version.environment is None:
        return None
    return image_reference(environment.images, version.model, version.environment.hash)


def kserve_backends(
    settings: KServeSettings, argo: ArgoSettings, *, clock: Clock, api: k8s.ApiClient | None = None
) -> dict[str, ServingBackend]:
    """``{"kserve": KServeServing}`` when Kubernetes is configured (or ``api`` given), else nothing."""
    if api is None and settings.kubeconfig is None:
        return {}

    def claim_dir(pvc: PvcArtifacts) -> Path:
        return argo.claim_dir(pvc.claim_name, pvc.mount_path)

    backend = KServeServing(
        api=api or kubernetes_api(settings), clock=clock, claim_dir=claim_dir, image_of=_image_of
    )
    return {"kserve": backend}


def revision_lookup(backends: Mapping[str, ServingBackend], catalog: Callable[[], Catalog]) -> RevisionLookup:
    """The revision serving a version in an environment on KServe; None for other environments."""

    def lookup(environment: str, model: str, version: str) -> Revision | None:
        env = catalog().environments.get(environment)
        if env is None or env.serving_backend != "kserve":
            return None
        backend = backends.get("kserve")
        if not isinstance(backend, KServeServing):
            raise LookupError(f"environment {environment!r} is served by kserve, which this controller lacks")
        name = backend.revision(environment=env, model=model, version=version)
        if name is None:
            raise LookupError(f"no KServe revision of {model} {version} is known in {environment}")
        return Revision(namespace=namespace_of(env), name=name)

    return lookup

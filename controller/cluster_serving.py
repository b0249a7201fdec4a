"""The composition root's part for KServe: the kserve serving backend and the revisions analysis reads.

:func:`controller.app.build_controller` calls :func:`kserve_backends` for the
serving backends this controller has by name (``kserve`` when the release
branch has an Environment served by KServe, through the Kubernetes API of
``FLYWHEEL_KUBECONFIG``, else the pod's own) and gives the Prometheus metrics
source :func:`revision_lookup`, so a check on a version served by KServe
reads the metrics of the revision serving it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from kubernetes import client as k8s

from controller.backends.kube import KubeConfigError, kube_client
from controller.backends.metrics.prometheus import Revision, RevisionLookup
from controller.backends.serving import ServedVersion, ServingBackend
from controller.backends.serving.drift_source import ClusterDrift
from controller.backends.serving.kserve import KServeServing
from controller.backends.serving.kserve_spec import namespace_of
from controller.clock import Clock
from controller.drift import PROFILE_FILE
from controller.drift.logger import predictor_logger
from controller.settings import ArgoSettings, DriftLoggerSettings, SettingsError
from controller.specs.types import Catalog, Environment, PvcArtifacts

__all__ = ["drift_logging", "kserve_backends", "revision_lookup"]


def _image_of(environment: Environment, version: ServedVersion) -> str | None:
    """The image a custom server runs in on KServe: the one the version's run ran in (its lineage's)."""
    return version.image


def kserve_backends(
    catalog: Catalog, argo: ArgoSettings, *, clock: Clock, api: k8s.ApiClient | None = None
) -> dict[str, ServingBackend]:
    """``{"kserve": KServeServing}`` when ``catalog`` (the release branch's) serves on KServe, else nothing.

    The Kubernetes API is ``api``, else :func:`~controller.backends.kube.kube_client`'s;
    none to be had is one :class:`SettingsError` naming the environment. An
    Environment served by KServe that is merged while the controller runs
    gets the backend at the next start (until then its rollouts fail saying
    this controller has no kserve backend).
    """
    served = sorted(
        (e for e in catalog.environments.values() if e.serving_backend == "kserve"), key=lambda e: e.name
    )
    if api is None and not served:
        return {}
    if api is None:
        try:
            api = kube_client(argo.kubeconfig)
        except KubeConfigError as exc:
            hint = "" if argo.kubeconfig else " (set FLYWHEEL_KUBECONFIG outside the cluster)"
            raise SettingsError(
                f"{served[0].spec_path}: environment {served[0].name!r} is served by KServe: "
                f"no Kubernetes API: {exc}{hint}"
            ) from None

    def claim_dir(pvc: PvcArtifacts) -> Path:
        return argo.claim_dir(pvc.claim_name, pvc.mount_path)

    backend = KServeServing(api=api, clock=clock, claim_dir=claim_dir, image_of=_image_of)
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


def drift_logging(
    backends: Mapping[str, ServingBackend], settings: DriftLoggerSettings, drift: ClusterDrift | None
) -> None:
    """Have the kserve backend log every request and answer to the webhook service, and watch each version.

    With ``settings.url`` each InferenceService's predictor gets a ``logger``
    (mode ``all``, to ``POST /drift/{model}/{environment}`` of that URL with the
    token), and each version deployed with a reference profile in its
    artifact is watched by ``drift`` (the controller's windows, fed by the
    inbox's consumer). Without it, or without a kserve backend, nothing.
    """
    backend = backends.get("kserve")
    if not isinstance(backend, KServeServing) or settings.url is None or drift is None:
        return
    url, token = settings.url, settings.token or ""

    def logger(environment: Environment, model: str) -> dict[str, str]:
        return predictor_logger(url, model=model, environment=environment.name, token=token)

    def watch(environment: Environment, version: ServedVersion) -> None:
        profile = Path(version.artifact_uri) / PROFILE_FILE
        if profile.is_file():
            drift.watch(
                environment=environment.name,
                model=version.model,
                version=version.version,
                profile=profile,
                settings=version.serving.drift,
            )

    backend.drift_logger, backend.drift_watch = logger, watch

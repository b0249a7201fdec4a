"""The cluster home's serving backend: a KServe InferenceService per model, canaries by canaryTrafficPercent.

:class:`KServeServing` implements :class:`~controller.backends.serving.ServingBackend`
for environments with ``serving.backend: kserve``; the composition root
builds it with a ``kubernetes`` API client (:mod:`controller.kserve_wiring`).
Objects are rendered by :mod:`.kserve_spec` and read back by
:mod:`.kserve_status`; every write goes through ``CustomObjectsApi``:

* **Create** with field manager ``flywheel``; an object that already exists
  (409) is read and carried on from, never created twice.
* **Change** by JSON merge patch carrying the ``resourceVersion`` it was read
  at: a conflict (409) means someone changed it in between, so the object is
  read again and the change worked out again. A write is never taken for its
  effect: each call then reads ``status.components.predictor`` until KServe
  reports what was asked (within ``ready_timeout_seconds``), and says what it
  reports instead when it does not.

How the interface maps onto KServe: a model's first version is created whole
and gets all traffic once ready, as KServe does. A later version replaces the
predictor with ``canaryTrafficPercent: 0`` (the version rolled out before,
and its predictor, kept in annotations), so it starts with no traffic;
:meth:`~KServeServing.set_weights` moves the percentage, and all of it to
the new version removes the field (promotion). A rollback routes everything
back (``canaryTrafficPercent: 0``), then :meth:`~KServeServing.retire`
restores the previous predictor, again behind ``canaryTrafficPercent: 0``
until its revision is ready, then without it. In raw (standard) deployment
mode KServe ignores ``canaryTrafficPercent``, so a second version would take
all traffic at once: that is refused with the reason. The artifact of a
version is published once to ``models/<model>/<version>`` on the
environment's artifact store, where the predictor's ``storageUri`` points:
copied onto the claim into a directory of its own and renamed into place,
or uploaded to the bucket file by file with a marker last (see
:mod:`.kserve_publish`). S3 failing is a
:class:`~controller.backends.serving.ServingError` saying where and what,
and the rollout tries again at its next tick.
Smoke tests go through the InferenceService's URL (the revision's tagged URL
while a canary runs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controller.backends.objects import Bucket
from controller.backends.serving import (
    DeployedVersion,
    ObservedServing,
    ServedVersion,
    ServingError,
    check_weights,
    inference_request,
)
from controller.backends.serving.kserve_publish import ArtifactPublisher
from controller.backends.serving.kserve_spec import (
    GROUP,
    MODEL_LABEL,
    PLURAL,
    PREVIOUS_PREDICTOR_ANNOTATION,
    PREVIOUS_VERSION_ANNOTATION,
    RAW_MODES,
    REVISIONS_ANNOTATION,
    VERSION,
    VERSION_ANNOTATION,
    inference_service,
    namespace_of,
    predictor,
    service_name,
)
from controller.backends.serving.kserve_status import Service, read_service
from controller.clock import Clock
from controller.specs.types import Environment, PvcArtifacts, S3Artifacts

__all__ = ["FIELD_MANAGER", "KServeServing"]

FIELD_MANAGER = "flywheel"
MERGE_PATCH = "application/merge-patch+json"
CONFIG_MAP = "inferenceservice-config"  # KServe's own settings, its default deployment mode among them
_CONFLICT_RETRIES = 5


class KServeServing:
    """Serves model versions as KServe InferenceServices through a ``kubernetes`` API client.

    ``claim_dir`` says where this controller sees an artifacts claim (to
    publish a version's artifact on it), ``bucket_of`` how it reaches an
    artifacts bucket (a :class:`~controller.backends.objects.Bucket`, with
    boto3's own credentials); ``image_of`` names a custom server's
    image. ``sleep`` waits between reads of the status (tests pass a short
    one); time is read from ``clock``.
    """

    def __init__(
        self,
        *,
        api: k8s.ApiClient,
        clock: Clock,
        claim_dir: Callable[[PvcArtifacts], Path],
        image_of: Callable[[Environment, ServedVersion], str | None] = lambda environment, version: None,
        bucket_of: Callable[[S3Artifacts], Bucket] = Bucket,
        ready_timeout_seconds: float = 600.0,
        poll_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        kserve_namespace: str = "kserve",
        http_timeout: float = 10.0,
    ) -> None:
        # drift in the cluster (set by the composition root when the logger's URL is configured): the
        # predictor's ``logger`` for a model in an environment, and who watches a deployed version
        self.drift_logger: Callable[[Environment, str], dict[str, str]] | None = None
        self.drift_watch: Callable[[Environment, ServedVersion], None] | None = None
        self.objects = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.clock = clock
        self.publisher = ArtifactPublisher(claim_dir=claim_dir, bucket_of=bucket_of)
        self.image_of = image_of
        self.ready_timeout_seconds = ready_timeout_seconds
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.kserve_namespace = kserve_namespace
        self.http_timeout = http_timeout
        self._default_mode: str | None = None
        self._default_mode_read = False

    # ------------------------------------------------------------------ the interface

    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        uri = self.publisher.publish(environment, version)
        image = self.image_of(environment, version) if version.serving.runtime == "custom" else None
        wanted = predictor(version, uri=uri, image=image, service_account=environment.serving_service_account)
        if self.drift_logger is not None:  # every request and answer to the webhook service, for drift
            wanted["logger"] = self.drift_logger(environment, version.model)
        for _ in range(_CONFLICT_RETRIES):
            service = self._get(environment, version.model)
            if service is None:
                body = inference_service(environment=environment, version=version, spec_predictor=wanted)
                if self._create(environment, body):
                    break
                continue  # someone created it meanwhile: read it and carry on from it
            if service.version == version.version:
                break  # asked before: wait for it below
            self._refuse_raw(environment, service, f"deploying {version.version} next to {service.version}")
            if service.canary_percent is not None and self._stable(service) not in (None, service.version):
                raise ServingError(
                    f"{version.model} in {environment.name}: {service.version} is still a canary next to "
                    f"{self._stable(service)}; promote it or roll it back before deploying {version.version}"
                )
            previous = service.version or ""
            kept = {k: v for k, v in service.predictor.items() if k != "canaryTrafficPercent"}
            patch = _replace_predictor(service.predictor, wanted, canary=0)
            patch["metadata"] = {
                "annotations": {
                    VERSION_ANNOTATION: version.version,
                    PREVIOUS_VERSION_ANNOTATION: previous,
                    PREVIOUS_PREDICTOR_ANNOTATION: json.dumps(kept, sort_keys=True),
                }
            }
            if self._patch(environment, service, patch):
                break
        else:
            raise ServingError(f"{version.model} in {environment.name}: the InferenceService kept changing")
        self._wait_serving(environment, version.model, version.version)
        if self.drift_watch is not None:
            self.drift_watch(environment, version)

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        checked = check_weights(weights)
        for _ in range(_CONFLICT_RETRIES):
            service = self._get(environment, model)
            if not checked:
                if service is not None:
                    self._delete(environment, service)
                return
            if service is None:
                raise ServingError(f"{model} is not deployed in {environment.name}")
            percent, expected = self._canary_for(environment, service, checked)
            if service.canary_percent == percent:
                break
            if self._patch(environment, service, {"spec": {"predictor": {"canaryTrafficPercent": percent}}}):
                break
        else:
            raise ServingError(f"{model} in {environment.name}: the InferenceService kept changing")
        self._wait_routes(environment, model, expected)

    def retire(self, *, environment: Environment, model: str, version: str) -> None:
        for _ in range(_CONFLICT_RETRIES):
            service = self._get(environment, model)
            if service is None:
                return
            share = service.routes().get(version, 0)
            if share > 0:
                raise ServingError(f"{model} {version} still gets {share}% of traffic in {environment.name}")
            if version != service.version:
                return  # an older revision without traffic: KServe keeps it scaled down, nothing to stop
            if service.previous_version is None or service.previous_predictor is None:
                self._delete(environment, service)
                return
            # a rollback: the version rolled out before comes back, behind 0% until its revision is up
            patch = _replace_predictor(service.predictor, service.previous_predictor, canary=0)
            patch["metadata"] = {
                "annotations": {
                    VERSION_ANNOTATION: service.previous_version,
                    PREVIOUS_VERSION_ANNOTATION: None,
                    PREVIOUS_PREDICTOR_ANNOTATION: None,
                }
            }
            if self._patch(environment, service, patch):
                restored = service.previous_version
                break
        else:
            raise ServingError(f"{model} in {environment.name}: the InferenceService kept changing")
        self._wait_serving(environment, model, restored)
        self.set_weights(environment=environment, model=model, weights={restored: 100})

    def smoke_test(
        self, *, environment: Environment, model: str, version: str, inputs: Sequence[Sequence[object]]
    ) -> None:
        service = self._get(environment, model)
        url = self._version_url(service, version) if service is not None else None
        if service is None or url is None:
            raise ServingError(
                f"version {version} of {model} is not served alone at any URL in {environment.name}"
            )
        base = f"{url.rstrip('/')}/v2/models/{service.name}"
        what = f"smoke test of {model} {version} at {base}"
        try:
            with httpx.Client(timeout=self.http_timeout) as http:
                ready = http.get(f"{base}/ready")
                if ready.status_code != 200:
                    raise ServingError(f"{what}: not ready (HTTP {ready.status_code})")
                if not inputs:
                    return
                answer = http.post(f"{base}/infer", json=inference_request(inputs))
        except httpx.HTTPError as exc:
            raise ServingError(f"{what}: no answer ({exc})") from exc
        if answer.status_code != 200:
            raise ServingError(f"{what}: HTTP {answer.status_code}: {answer.text[:500]}")
        try:
            rows = answer.json()["outputs"][0]["shape"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServingError(f"{what}: not an OIP v2 answer: {answer.text[:200]!r}") from exc
        if rows != len(inputs):
            raise ServingError(f"{what}: {len(inputs)} inputs gave {rows} outputs")

    def deployed(self, *, environment: Environment, model: str) -> Sequence[DeployedVersion]:
        service = self._get(environment, model)
        if service is None:
            return ()
        routes = service.routes()
        versions = [v for v in routes if v in service.revisions.values() or v == service.version]
        if service.version is not None and service.version not in versions and service.latest_ready_now:
            versions.append(service.version)
        return tuple(
            DeployedVersion(
                model=model,
                version=v,
                url=self._version_url(service, v) or service.url or "",
                weight=routes.get(v, 0),
            )
            for v in versions
        )

    def observe(self, *, environment: Environment) -> ObservedServing:
        namespace = namespace_of(environment)
        try:
            listed = self.objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector="app.kubernetes.io/managed-by=flywheel"
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return ObservedServing(
                environment=environment.name, unknown=f"InferenceServices in {namespace}: {_why(exc)}"
            )
        routes: dict[str, dict[str, int]] = {}
        live: dict[str, frozenset[str]] = {}
        items = listed.get("items") if isinstance(listed, dict) else None
        for item in items or []:
            model = ((item.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL)
            if not model:
                continue
            service = read_service(item)
            routes[model] = service.routes()
            known = set(service.revisions.values()) | {service.version}
            up = {v for v in routes[model] if v in known} if service.condition("PredictorReady") else set()
            if service.latest_ready_now and service.version is not None:
                up.add(service.version)
            live[model] = frozenset(up)
        return ObservedServing(environment=environment.name, routes=routes, live=live)

    def endpoint(self, *, environment: Environment, model: str) -> str:
        service = self._get(environment, model)
        if service is None or not service.url:
            raise ServingError(f"{model} has no InferenceService URL in {environment.name} yet")
        return f"{service.url.rstrip('/')}/v2/models/{service.name}"

    def revision(self, *, environment: Environment, model: str, version: str) -> str | None:
        """The revision serving ``version`` of ``model`` now (for PromQL), or None when none is known."""
        try:
            service = self._get(environment, model)
        except ServingError:
            return None
        return service.revision_of(version) if service is not None else None

    def shutdown(self) -> None:
        """Nothing to stop: the cluster keeps serving; the API client is its owner's to close."""

    # ------------------------------------------------------------------ reading and writing

    def _get(self, environment: Environment, model: str) -> Service | None:
        namespace, name = namespace_of(environment), service_name(model)
        try:
            document = self.objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ServingError(f"InferenceService {namespace}/{name}: {_why(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ServingError(f"InferenceService {namespace}/{name}: {_why(exc)}") from None
        if not isinstance(document, dict):
            raise ServingError(f"InferenceService {namespace}/{name}: not an object: {document!r}"[:300])
        service = read_service(document)
        if service.environment not in (None, environment.name):
            raise ServingError(
                f"InferenceService {namespace}/{name} serves environment {service.environment!r}, not "
                f"{environment.name!r}: give each environment its own serving.namespace"
            )
        return service

    def _create(self, environment: Environment, body: dict[str, Any]) -> bool:
        """Create ``body``; False when it exists already (409)."""
        namespace = namespace_of(environment)
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise ServingError(
                f"creating InferenceService {namespace}/{body['metadata']['name']}: {_why(exc)}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServingError(
                f"creating InferenceService {namespace}/{body['metadata']['name']}: {_why(exc)}"
            ) from None
        return True

    def _patch(self, environment: Environment, service: Service, patch: dict[str, Any]) -> bool:
        """Merge ``patch`` into ``service`` as read; False when it changed since (409: read it again)."""
        namespace = namespace_of(environment)
        patch.setdefault("metadata", {})["resourceVersion"] = service.resource_version
        try:
            self.objects.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                service.name,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise ServingError(f"changing InferenceService {namespace}/{service.name}: {_why(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServingError(f"changing InferenceService {namespace}/{service.name}: {_why(exc)}") from None
        return True

    def _delete(self, environment: Environment, service: Service) -> None:
        namespace = namespace_of(environment)
        try:
            self.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service.name)
        except ApiException as exc:
            if exc.status != 404:
                raise ServingError(
                    f"deleting InferenceService {namespace}/{service.name}: {_why(exc)}"
                ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServingError(f"deleting InferenceService {namespace}/{service.name}: {_why(exc)}") from None

    # ------------------------------------------------------------------ waiting for KServe

    def _wait(
        self, environment: Environment, model: str, done: Callable[[Service], bool], what: str
    ) -> Service:
        deadline = self.clock.monotonic() + self.ready_timeout_seconds
        while True:
            service = self._get(environment, model)
            if service is not None and done(service):
                return service
            if self.clock.monotonic() >= deadline:
                said = "it is gone" if service is None else _reported(service)
                raise ServingError(
                    f"{model} in {environment.name}: {what} not reported after "
                    f"{self.ready_timeout_seconds:g}s; KServe reports {said}"
                )
            self.sleep(self.poll_seconds)

    def _wait_serving(self, environment: Environment, model: str, version: str) -> None:
        """Wait until the predictor of ``version`` has a ready revision, and record which one it is."""

        def ready(service: Service) -> bool:
            if service.seen and service.failure() and service.latest_created != service.latest_ready:
                raise ServingError(
                    f"{model} {version} in {environment.name} does not become ready: {service.failure()}"
                )
            return service.version == version and service.latest_ready_now is not None

        for _ in range(_CONFLICT_RETRIES):
            service = self._wait(environment, model, ready, f"a ready revision of {version}")
            revision = service.latest_ready_now
            assert revision is not None
            if service.revisions.get(revision) == version:
                return
            recorded = {**service.revisions, revision: version}
            patch = {
                "metadata": {"annotations": {REVISIONS_ANNOTATION: json.dumps(recorded, sort_keys=True)}}
            }
            if self._patch(environment, service, patch):
                return
        raise ServingError(f"{model} in {environment.name}: the InferenceService kept changing")

    def _wait_routes(self, environment: Environment, model: str, expected: Mapping[str, int]) -> None:
        wanted = {v: w for v, w in expected.items() if w > 0}

        def routed(service: Service) -> bool:
            return {v: w for v, w in service.routes().items() if w > 0} == wanted

        self._wait(environment, model, routed, f"traffic {_shares(wanted)}")

    # ------------------------------------------------------------------ rules

    def _stable(self, service: Service) -> str | None:
        """The version rolled out before the predictor's: where KServe sends a canary's other traffic."""
        if service.latest_rolled_out is not None:
            rolled = service.version_of(service.latest_rolled_out)
            if rolled is not None:
                return rolled
        return service.previous_version

    def _canary_for(
        self, environment: Environment, service: Service, weights: Mapping[str, int]
    ) -> tuple[int | None, dict[str, int]]:
        """(the ``canaryTrafficPercent`` that routes ``weights``, None to remove it; the routes to expect)."""
        current, stable = service.version, self._stable(service)
        routed = {v: w for v, w in weights.items() if w > 0}
        if current is not None and routed == {current: 100}:
            return None, {current: 100}
        if (
            current is not None
            and stable is not None
            and stable != current
            and set(routed) <= {current, stable}
        ):
            percent = weights.get(current, 0)
            if percent > 0:
                self._refuse_raw(environment, service, f"a canary of {percent}% for {current}")
            return percent, {current: percent, stable: 100 - percent}
        raise ServingError(
            f"{service.name} in {environment.name}: KServe splits traffic between the version rolling out "
            f"({current}) and the one rolled out before it ({stable}); it cannot route {_shares(weights)}"
        )

    def _refuse_raw(self, environment: Environment, service: Service, what: str) -> None:
        mode = service.deployment_mode or self._cluster_default_mode()
        if mode in RAW_MODES:
            raise ServingError(
                f"{service.name} in {environment.name} runs in KServe's {mode} mode, which ignores "
                f"canaryTrafficPercent: refusing {what}, which would send it all traffic at once "
                "(serve it in Serverless mode for canary steps)"
            )

    def _cluster_default_mode(self) -> str | None:
        """KServe's default deployment mode (its ``inferenceservice-config``), once; None when unreadable."""
        if not self._default_mode_read:
            self._default_mode_read = True
            try:
                config = self.core.read_namespaced_config_map(CONFIG_MAP, self.kserve_namespace)
                deploy = json.loads((config.data or {}).get("deploy", "{}"))
                mode = deploy.get("defaultDeploymentMode") if isinstance(deploy, dict) else None
                self._default_mode = mode if isinstance(mode, str) else None
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError):
                self._default_mode = None
        return self._default_mode

    def _version_url(self, service: Service, version: str) -> str | None:
        """A URL reaching ``version`` alone: the service's when it has all traffic, else its tagged one."""
        routes = {v: w for v, w in service.routes().items() if w > 0}
        if routes == {version: 100} and service.url:
            return service.url
        revision = service.revision_of(version)
        for entry in service.traffic:
            if entry.revision == revision and entry.url:
                return entry.url
        return None


def _replace_predictor(
    old: Mapping[str, Any], new: Mapping[str, Any], *, canary: int | None
) -> dict[str, Any]:
    """A merge patch turning predictor ``old`` into ``new`` (keys only ``old`` has are removed)."""
    body: dict[str, Any] = {key: None for key in old if key not in new}
    body.update(new)
    body["canaryTrafficPercent"] = canary
    return {"spec": {"predictor": body}}


def _shares(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {w}%" for v, w in sorted(weights.items())) or "none"


def _reported(service: Service) -> str:
    routes = _shares(service.routes())
    why = service.failure()
    return f"traffic {routes}, latest ready revision {service.latest_ready}" + (f" ({why})" if why else "")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"HTTP {exc.status}: {message or exc.reason}"
    return f"{type(exc).__name__}: {exc}"

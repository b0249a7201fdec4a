"""Reading an InferenceService as KServe reports it: which revision serves which version, with what share.

:mod:`.kserve` reads every answer of the cluster through :func:`read_service`
and never assumes a write took effect: what serves is what
``status.components.predictor`` says (``traffic``, ``latestCreatedRevision``,
``latestReadyRevision``, ``latestRolledoutRevision``,
``previousRolledoutRevision``) together with ``status.conditions`` and
``status.observedGeneration``.

A revision is known to serve a version when Flywheel recorded it
(:data:`~.kserve_spec.REVISIONS_ANNOTATION`, written once KServe reported
the revision ready) or when it is the latest revision KServe created for the
generation it has observed, whose predictor carries the version
(:data:`~.kserve_spec.VERSION_ANNOTATION`). Any other revision in the traffic
is reported by its own name, so the serving watch sees a discrepancy rather
than a guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.backends.serving.kserve_spec import (
    DEPLOYMENT_MODE_ANNOTATION,
    ENVIRONMENT_LABEL,
    PREVIOUS_PREDICTOR_ANNOTATION,
    PREVIOUS_VERSION_ANNOTATION,
    RAW_MODES,
    REVISIONS_ANNOTATION,
    VERSION_ANNOTATION,
)

__all__ = ["Service", "Traffic", "read_service"]


@dataclass(frozen=True)
class Traffic:
    """One entry of ``status.components.predictor.traffic``."""

    revision: str
    percent: int
    latest: bool = False
    url: str | None = None  # the revision's own (tagged) URL, when KServe gives one


@dataclass(frozen=True, kw_only=True)
class Service:
    """One InferenceService as read from the cluster: what Flywheel asked for and what KServe reports."""

    name: str
    environment: str | None  # the environment label: whose the object is
    resource_version: str
    generation: int
    observed_generation: int
    version: str | None  # the predictor's version (annotation)
    previous_version: str | None
    previous_predictor: Mapping[str, Any] | None
    predictor: Mapping[str, Any]  # spec.predictor as stored
    revisions: Mapping[str, str] = field(default_factory=dict)  # revision -> version, as recorded
    deployment_mode: str | None = None  # the annotation, else status.deploymentMode
    latest_created: str | None = None
    latest_ready: str | None = None
    latest_rolled_out: str | None = None
    previous_rolled_out: str | None = None
    traffic: tuple[Traffic, ...] = ()
    conditions: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, message)
    url: str | None = None

    @property
    def canary_percent(self) -> int | None:
        value = self.predictor.get("canaryTrafficPercent")
        return value if isinstance(value, int) else None

    @property
    def raw(self) -> bool:
        """In raw (standard) deployment mode, where KServe ignores ``canaryTrafficPercent``."""
        return self.deployment_mode in RAW_MODES

    @property
    def seen(self) -> bool:
        """KServe has reconciled the spec as it is now (its observed generation caught up)."""
        return self.observed_generation >= self.generation

    def condition(self, kind: str) -> bool:
        return self.conditions.get(kind, ("", ""))[0] == "True"

    @property
    def latest_ready_now(self) -> str | None:
        """The revision of the current spec once KServe has seen the spec and that revision is up."""
        if not self.seen or self.latest_created is None or self.latest_created != self.latest_ready:
            return None
        if not self.condition("PredictorReady"):
            return None
        return self.latest_ready

    def version_of(self, revision: str) -> str | None:
        """The version ``revision`` serves, when known."""
        if revision in self.revisions:
            return self.revisions[revision]
        if self.seen and revision == self.latest_created:
            return self.version
        return None

    def revision_of(self, version: str) -> str | None:
        """The revision serving ``version`` now: in the traffic if it is there, else the newest recorded."""
        for entry in self.traffic:
            if self.version_of(entry.revision) == version:
                return entry.revision
        named = [revision for revision, v in self.revisions.items() if v == version]
        if self.seen and self.version == version and self.latest_created is not None:
            named.append(self.latest_created)
        return max(named) if named else None  # names end in a zero-padded counter

    def routes(self) -> dict[str, int]:
        """Version (or, when unknown, revision name) -> percent, as KServe routes the predictor now."""
        result: dict[str, int] = {}
        for entry in self.traffic:
            key = self.version_of(entry.revision) or entry.revision
            result[key] = result.get(key, 0) + entry.percent
        return result

    def failure(self) -> str | None:
        """Why the predictor is not ready, from the conditions KServe reports (None: no failure said)."""
        for kind in ("PredictorReady", "PredictorConfigurationReady", "Ready"):
            status, message = self.conditions.get(kind, ("", ""))
            if status == "False":
                return f"{kind}: {message}" if message else kind
        return None


def read_service(document: Mapping[str, Any]) -> Service:
    """A :class:`Service` from an InferenceService as the Kubernetes API returns it."""
    metadata = document.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = document.get("status") or {}
    component = (status.get("components") or {}).get("predictor") or {}
    conditions = {
        str(c.get("type")): (str(c.get("status", "")), str(c.get("message") or c.get("reason") or ""))
        for c in status.get("conditions") or []
    }
    traffic = tuple(
        Traffic(
            revision=str(entry.get("revisionName") or ""),
            percent=int(entry.get("percent") or 0),
            latest=bool(entry.get("latestRevision")),
            url=entry.get("url") or None,
        )
        for entry in component.get("traffic") or []
        if entry.get("revisionName")
    )
    address = (status.get("address") or {}).get("url")
    recorded = _json_object(annotations.get(REVISIONS_ANNOTATION)) or {}
    return Service(
        name=str(metadata.get("name", "")),
        environment=(metadata.get("labels") or {}).get(ENVIRONMENT_LABEL),
        resource_version=str(metadata.get("resourceVersion", "")),
        generation=int(metadata.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        version=annotations.get(VERSION_ANNOTATION),
        previous_version=annotations.get(PREVIOUS_VERSION_ANNOTATION),
        previous_predictor=_json_object(annotations.get(PREVIOUS_PREDICTOR_ANNOTATION)),
        predictor=(document.get("spec") or {}).get("predictor") or {},
        revisions={str(k): str(v) for k, v in recorded.items()},
        deployment_mode=annotations.get(DEPLOYMENT_MODE_ANNOTATION) or status.get("deploymentMode"),
        latest_created=component.get("latestCreatedRevision"),
        latest_ready=component.get("latestReadyRevision"),
        latest_rolled_out=component.get("latestRolledoutRevision"),
        previous_rolled_out=component.get("previousRolledoutRevision"),
        traffic=traffic,
        conditions=conditions,
        url=status.get("url") or address,
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

"""The documents the read commands print with ``--json``, built once for the local state and the API.

``flywheel models``, ``status``, ``versions``, ``history`` and ``audit``
(:mod:`controller.cli.status`, :mod:`controller.cli.registry`) build them from
the local store and render them; the dashboard's API (:mod:`controller.ui.app`)
answers the very same documents, which those commands read instead with
``--server``, so a command prints the same remotely as locally. Each is the
engine's own ``to_json`` shape (:class:`~controller.engine.status.ModelStatus`,
:class:`~controller.engine.observed.Discrepancy`,
:class:`~controller.backends.store.AuditEntry`) or a plain record of the store's;
times are ISO 8601. Nothing is written; "now" is the caller's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from typing_extensions import TypedDict

from controller.backends.store import AuditReads, ModelVersion, Run, ServingRecord
from controller.engine.observed import open_discrepancies
from controller.engine.status import ModelStatusRecords, model_status, model_statuses
from controller.specs.types import Catalog

__all__ = [
    "Change",
    "HistoryDocument",
    "Missing",
    "Split",
    "TrafficReads",
    "VersionReads",
    "VersionRow",
    "audit_document",
    "history_document",
    "models_document",
    "status_document",
    "versions_document",
]


class Missing(LookupError):
    """What a command asks about is not in the store: ``what`` it is, and a ``hint`` of what there is."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(f"{what} ({hint})" if hint else what)
        self.what = what
        self.hint = hint


class VersionReads(Protocol):
    def list_versions(self, model: str) -> list[ModelVersion]: ...

    def get_run(self, run_id: int) -> Run: ...


class TrafficReads(Protocol):
    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]: ...


class VersionRow(TypedDict):
    """A version with its lineage, as ``flywheel versions --json`` prints it."""

    version: int
    content_id: str
    run: int
    reused_from: int | None
    commit: str
    artifact_digest: str
    artifact_uri: str
    environment_hash: str
    data_fingerprints: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    created_at: str


class Split(TypedDict):
    """A version's share of an environment's traffic at one time."""

    version: int
    weight: int


class Change(TypedDict):
    """From ``at`` on, ``version`` took ``weight`` percent of the environment's traffic."""

    at: str
    version: int
    weight: int


class HistoryDocument(TypedDict):
    """What served a model in each environment: every change, or (``at`` given) the split at that time."""

    model: str
    at: str | None
    environments: dict[str, list[Change]] | dict[str, list[Split]]


def models_document(
    store: ModelStatusRecords, log: AuditReads, *, now: datetime, catalog: Catalog | None
) -> list[dict[str, Any]]:
    """``flywheel models --json``: every model's status with the open discrepancies of what serves it."""
    differs = list(open_discrepancies(log.audit()).values())
    return [
        {**found.to_json(), "discrepancies": [d.to_json() for d in differs if d.model == found.model]}
        for found in model_statuses(store, now=now, catalog=catalog)
    ]


def status_document(
    store: ModelStatusRecords, log: AuditReads, model: str, *, now: datetime, catalog: Catalog | None
) -> dict[str, Any]:
    """``flywheel status MODEL --json``; :class:`Missing` when the store knows nothing of ``model``."""
    found = model_status(store, model, now=now, catalog=catalog)
    if found.latest_version is None and found.rollout is None and found.release_run is None:
        known = ", ".join(s.model for s in model_statuses(store, now=now)) or "none yet"
        raise Missing(f"no model {model!r}", f"models: {known}")
    differs = open_discrepancies(log.audit(model=model)).values()
    return {**found.to_json(), "discrepancies": [d.to_json() for d in differs]}


def versions_document(store: VersionReads, model: str) -> list[VersionRow]:
    """``flywheel versions MODEL --json``, oldest first; :class:`Missing` when it has none."""
    found = store.list_versions(model)
    if not found:
        raise Missing(f"{model} has no registered versions")
    return [
        VersionRow(
            version=v.number,
            content_id=v.content_id,
            run=v.run_id,
            reused_from=store.get_run(v.run_id).reused_from,
            commit=v.commit,
            artifact_digest=v.artifact_digest,
            artifact_uri=v.artifact_uri,
            environment_hash=v.environment_hash,
            data_fingerprints=v.data_fingerprints,
            params=v.params,
            metrics=v.metrics,
            created_at=v.created_at.isoformat(),
        )
        for v in found
    ]


def history_document(
    store: ModelStatusRecords,
    traffic: TrafficReads,
    model: str,
    *,
    environment: str | None = None,
    at: datetime | None = None,
) -> HistoryDocument:
    """``flywheel history MODEL --json``: each environment's traffic changes, or the split ``at`` (UTC).

    Only ``environment`` when given; :class:`Missing` when the model was never rolled out.
    """
    environments = sorted({s for r in store.rollouts_for(model) for s in r.stages})
    if environment is not None:
        environments = [environment]
    if not environments:
        raise Missing(f"{model} has never been rolled out")
    if at is not None:
        when = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        splits = {
            env: [
                Split(version=v, weight=w) for v, w in store.served_at(environment=env, model=model, at=when)
            ]
            for env in environments
        }
        return HistoryDocument(model=model, at=when.isoformat(), environments=splits)
    changes = {
        env: [
            Change(at=r.at.isoformat(), version=r.version, weight=r.weight)
            for r in traffic.serving_history(environment=env, model=model)
        ]
        for env in environments
    }
    return HistoryDocument(model=model, at=None, environments=changes)


def audit_document(log: AuditReads, *, model: str | None, limit: int | None) -> list[dict[str, Any]]:
    """``flywheel audit --json``'s entries (of ``model``), oldest first; with ``limit``, the newest N."""
    return [entry.to_json() for entry in log.audit(model=model, limit=limit)]

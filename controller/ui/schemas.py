"""The dashboard's JSON API shapes (pydantic models) and the OpenAPI document built from them.

:mod:`controller.ui.facts` fills these models from the store; the API
(:mod:`controller.ui.app`) answers them as JSON and the pages render the very
same objects, so a page never shows a fact the API does not have.
:func:`openapi_document` is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApprovalGiven",
    "ApprovalMissing",
    "AuditItem",
    "AuditList",
    "CheckPoint",
    "DriftEnvironment",
    "DriftFeature",
    "DriftReport",
    "DriftVersion",
    "Links",
    "ModelDetail",
    "ModelItem",
    "ModelList",
    "PendingApproval",
    "PendingList",
    "Problem",
    "ProposalItem",
    "ProposalList",
    "RolloutDetail",
    "Round",
    "ServingShare",
    "StageApprovals",
    "VersionItem",
    "WeightPoint",
    "openapi_document",
]


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Links(_Shape):
    """Where a fact is seen elsewhere: the pull request, the commit, the Slack thread (when known)."""

    pull_request: str | None = None
    commit: str | None = None
    slack: str | None = None


class ServingShare(_Shape):
    environment: str
    version: int
    weight: int = Field(ge=0, le=100)


class ModelItem(_Shape):
    """A row of the model list: the registry's summary and what its newest rollout does."""

    model: str
    versions: int
    latest: int
    latest_at: datetime
    rollout: int | None  # the newest rollout's id
    condition: str | None  # in_progress, holding, succeeded, ... (``flywheel models``' words)
    reason: str
    serving: list[ServingShare]


class ModelList(_Shape):
    models: list[ModelItem]
    total: int
    offset: int
    limit: int
    sort: str
    search: str | None


class VersionItem(_Shape):
    """A version and its lineage: what it was trained from and what it ships."""

    version: int
    content_id: str
    run: int
    reused_from: int | None
    commit: str
    data_fingerprints: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    image: str | None
    environment_hash: str
    artifact_digest: str
    artifact_uri: str
    created_at: datetime
    serving_in: list[str]  # environments it serves in now
    links: Links


class TimelineItem(_Shape):
    at: datetime
    actor: str
    action: str
    subject: str
    why: str


class RolloutItem(_Shape):
    id: int
    version: int
    condition: str
    stages: list[str]
    started_at: datetime
    finished_at: datetime | None


class ModelDetail(_Shape):
    model: str
    latest: int | None
    versions: list[VersionItem]  # newest first
    serving: list[ServingShare]  # now, or at ``at`` when asked
    at: datetime | None
    rollouts: list[RolloutItem]  # newest first
    timeline: list[TimelineItem]  # newest first


class CheckPoint(_Shape):
    """One check's measurement in one round, against its bounds (from main's spec, when read)."""

    check: str
    value: float | None
    samples: int | None
    rule: str
    outcome: str
    min: float | None = None
    max: float | None = None


class Round(_Shape):
    """One analysis round as the audit log holds it."""

    at: datetime
    environment: str | None
    outcome: str
    summary: str
    decision: str | None
    checks: list[CheckPoint]


class WeightPoint(_Shape):
    at: datetime
    environment: str
    weight: int


class ApprovalGiven(_Shape):
    user: str
    decision: str
    channel: str
    comment: str
    at: datetime
    expires_at: datetime | None


class StageApprovals(_Shape):
    environment: str
    given: list[ApprovalGiven]


class ApprovalMissing(_Shape):
    """The gate the rollout waits at: the rule, who may approve, how many more are needed."""

    environment: str
    rule: str | None
    groups: list[str]
    required: int | None
    missing: int | None
    approvers: list[str]
    rejecters: list[str]
    message: str


class RolloutDetail(_Shape):
    id: int
    model: str
    version: int
    state: str
    condition: str
    reason: str
    stages: list[str]
    stage: str | None
    weight: int | None
    author: str | None
    started_at: datetime
    finished_at: datetime | None
    waiting_for: list[str]
    rounds: list[Round]  # oldest first
    weights: list[WeightPoint]  # the new version's share, oldest first
    approvals: list[StageApprovals]
    missing: ApprovalMissing | None
    links: Links


class ProposalItem(_Shape):
    branch: str
    model: str
    commit: str
    state: str
    description: str
    updated_at: datetime
    run: int | None
    compared_with: int | None
    report: str  # the review's report, as on the pull request (Markdown)
    links: Links


class ProposalList(_Shape):
    proposals: list[ProposalItem]


class PendingApproval(_Shape):
    rollout: int
    model: str
    version: int
    author: str | None
    waiting_since: datetime
    gate: ApprovalMissing


class PendingList(_Shape):
    pending: list[PendingApproval]


class AuditItem(_Shape):
    id: int
    at: datetime
    actor: str
    action: str
    model: str | None
    version: int | None
    environment: str | None
    why: str


class AuditList(_Shape):
    entries: list[AuditItem]  # newest first
    limit: int


class DriftFeature(BaseModel):
    """One feature of a version's latest live window against its training data (the router's table)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    feature: str
    kind: str
    samples: int
    psi: float | None
    test: str
    p_value: float | None
    threshold: float
    status: str  # stable | warn | drift | not enough data
    sustained_windows: int = 0


class DriftVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str
    window: str  # current | previous
    rows: int
    features: list[DriftFeature]


class DriftEnvironment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    environment: str
    versions: list[DriftVersion] = []
    error: str | None = None  # why the environment's router could not be asked


class DriftReport(_Shape):
    model: str
    environments: list[DriftEnvironment]


class Problem(_Shape):
    """An error: what was asked for, and why it cannot be answered."""

    error: str


class ActionRequest(_Shape):
    """What a person asks of a model's rollout through the API (with a bearer token)."""

    command: Literal["approve", "reject", "pause", "resume", "promote", "abort", "rollback"]
    version: int | None = None  # approve and reject: the version at the gate (default: the one there)
    environment: str | None = None  # approve and reject: the gate (default: the next one)
    reason: str | None = None  # kept in the audit log
    claimed: str | None = Field(default=None, alias="as")  # who the caller says the token is (the CLI's --as)


class ActionOutcome(_Shape):
    """The engine's answer to one request: done or refused, in a sentence."""

    ok: bool
    message: str
    refusal: str | None
    user: str | None
    rollout: int | None
    duplicate: bool


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_TIME = {"type": "string", "format": "date-time"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 255}


def _get(
    summary: str, shape: type[BaseModel] | str, parameters: list[dict[str, Any]], *, many: bool = False
) -> dict[str, Any]:
    """A GET operation answering ``shape`` (a pydantic model, or a component's name), or a list of them."""
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    name = shape if isinstance(shape, str) else shape.__name__
    answer: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": answer} if many else answer}
                    },
                },
                "400": {"description": "A parameter is not valid", "content": problem},
                "401": {
                    "description": "Reading needs sign-in or a token, or the token is refused",
                    "content": problem,
                },
                "404": {"description": "No such thing in the store", "content": problem},
            },
        }
    }


def _document_schemas() -> dict[str, Any]:
    """The schemas of the read commands' ``--json`` documents (:mod:`controller.engine.documents`).

    They are the engine's records' own (pydantic reads the dataclasses and typed dicts), with what
    their ``to_json`` adds: a rollout's ``active``, a release run's ``needs_attention``, the
    discrepancies of what serves.
    """
    from pydantic import TypeAdapter

    from controller.backends.store import AuditEntry
    from controller.engine.documents import HistoryDocument, VersionRow
    from controller.engine.observed import Discrepancy
    from controller.engine.status import ModelStatus

    found: dict[str, Any] = {}
    named: list[tuple[str, Any]] = [
        ("ModelStatusDocument", ModelStatus),
        ("Discrepancy", Discrepancy),
        ("VersionRow", VersionRow),
        ("HistoryDocument", HistoryDocument),
        ("AuditEntry", AuditEntry),
    ]
    for name, shape in named:
        schema = TypeAdapter(shape).json_schema(ref_template=_REF, mode="serialization")
        found.update(schema.pop("$defs", {}))
        found[name] = schema
    found["RolloutStatus"]["properties"]["active"] = {"type": "boolean"}
    found["RolloutStatus"]["required"].append("active")
    found["ReleaseRun"]["properties"]["needs_attention"] = {"type": "boolean"}
    found["ReleaseRun"]["required"].append("needs_attention")
    status = found["ModelStatusDocument"]
    status["properties"]["discrepancies"] = {
        "type": "array",
        "items": {"$ref": _REF.format(model="Discrepancy")},
    }
    status["required"].append("discrepancies")
    return found


_REF = "#/components/schemas/{model}"


def openapi_document(*, sorts: tuple[str, ...]) -> dict[str, Any]:
    """The API's OpenAPI 3.1 document; the schemas are the pydantic models' own."""
    shapes: list[type[BaseModel]] = [
        ModelList,
        ModelDetail,
        RolloutDetail,
        ProposalList,
        PendingList,
        AuditList,
        DriftReport,
        Problem,
        ActionRequest,
        ActionOutcome,
    ]
    schemas: dict[str, Any] = {}
    for shape in shapes:
        schema = shape.model_json_schema(ref_template=_REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[shape.__name__] = schema
    documents = _document_schemas()
    assert not set(documents) & set(schemas), "a document's schema is named like one of the API's shapes"
    schemas.update(documents)
    paths = {
        "/api/v1/models": _get(
            "Models, searched, sorted and paginated",
            ModelList,
            [
                _query("q", {"type": "string", "maxLength": 255}, "A part of the name, any case"),
                _query("sort", {"type": "string", "enum": list(sorts)}, "Order; '-' first: descending"),
                _query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}, "Models to skip"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Models per page"),
            ],
        ),
        "/api/v1/models/{model}": _get(
            "A model: versions with lineage, serving per environment, rollouts, timeline",
            ModelDetail,
            [_path("model", _NAME), _query("at", _TIME, "What served at this time")],
        ),
        "/api/v1/rollouts/{rollout}": _get(
            "A rollout: stages, weights over time, analysis rounds, decision, approvals",
            RolloutDetail,
            [_path("rollout", {"type": "integer", "minimum": 1})],
        ),
        "/api/v1/proposals": _get(
            "Proposals with their reports",
            ProposalList,
            [_query("branch", _NAME, "Only this proposal branch")],
        ),
        "/api/v1/models/{model}/drift": _get(
            "Drift per feature of the model's served versions, from each environment's router",
            DriftReport,
            [_path("model", _NAME)],
        ),
        "/api/v1/approvals/pending": _get("Rollouts waiting at an approval gate", PendingList, []),
        "/api/v1/audit": _get(
            "The audit log, newest first, filtered",
            AuditList,
            [
                _query("model", _NAME, "Only this model"),
                _query("actor", _NAME, "Only this person (or Flywheel)"),
                _query("action", _NAME, "Only this action, e.g. approval.approve"),
                _query("since", _TIME, "From this time on"),
                _query("until", _TIME, "Before this time"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Entries at most"),
            ],
        ),
        "/api/v1/status": _get(
            "Every model's status (what `flywheel models --json` prints)",
            "ModelStatusDocument",
            [],
            many=True,
        ),
        "/api/v1/models/{model}/status": _get(
            "A model's status (what `flywheel status MODEL --json` prints)",
            "ModelStatusDocument",
            [_path("model", _NAME)],
        ),
        "/api/v1/models/{model}/versions": _get(
            "A model's versions, oldest first (what `flywheel versions MODEL --json` prints)",
            "VersionRow",
            [_path("model", _NAME)],
            many=True,
        ),
        "/api/v1/models/{model}/history": _get(
            "What served a model: every traffic change, or the split at a time (`flywheel history --json`)",
            "HistoryDocument",
            [
                _path("model", _NAME),
                _query("environment", _NAME, "Only this environment"),
                _query("at", _TIME, "The split at this time, instead of every change"),
            ],
        ),
        "/api/v1/audit/entries": _get(
            "Audit entries with every field, oldest first (what `flywheel audit --json` prints)",
            "AuditEntry",
            [
                _query("model", _NAME, "Only this model"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10**9}, "Only the newest N"),
            ],
            many=True,
        ),
    }
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    outcome = {"application/json": {"schema": {"$ref": "#/components/schemas/ActionOutcome"}}}
    refused = {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/ActionOutcome"},
                    {"$ref": "#/components/schemas/Problem"},
                ]
            }
        }
    }
    paths["/api/v1/models/{model}/actions"] = {
        "post": {
            "summary": "Approve, reject, pause, resume, promote, abort or roll back, as the token's person",
            "security": [{"token": []}],
            "parameters": [_path("model", _NAME)],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionRequest"}}},
            },
            "responses": {
                "200": {"description": "Done (or already so)", "content": outcome},
                "400": {"description": "The request cannot be read", "content": problem},
                "401": {"description": "No valid bearer token", "content": problem},
                "403": {
                    "description": "Refused by main's policy, or this dashboard only reads",
                    "content": refused,
                },
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flywheel dashboard API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    }

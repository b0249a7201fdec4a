"""The model registry: immutable, numbered, content-addressed versions of each model.

The release step registers a version from a judged run of main; the rollout
engine, the status views and the CLI read them. Versions are append-only
(the database refuses UPDATE and DELETE on them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypedDict, Unpack

from controller.backends.store.common import JSONObject

__all__ = ["ModelPage", "ModelQuery", "ModelSort", "ModelSummary", "ModelVersion", "NewVersion", "Registry"]

# By name, by when the latest version was registered, or by how many versions; "-" first: descending.
ModelSort = Literal["name", "-name", "latest", "-latest", "versions", "-versions"]
MODEL_SORTS: tuple[ModelSort, ...] = ("name", "-name", "latest", "-latest", "versions", "-versions")


@dataclass(frozen=True)
class ModelVersion:
    """An immutable, numbered version of a model (1, 2, ... per model).

    ``content_id`` is a digest of what ships: the model name, commit, data
    fingerprints, params, environment hash and artifact digest.
    """

    model: str
    number: int
    content_id: str
    run_id: int
    commit: str
    artifact_digest: str
    artifact_uri: str
    environment_hash: str
    created_at: datetime
    data_fingerprints: dict[str, str] = field(default_factory=dict)
    params: JSONObject = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    image: str | None = None  # reference@sha256:… of the image its run ran in; None: no image (embedded home)


class _NewVersionKeys(TypedDict):
    model: str
    run_id: int
    commit: str
    artifact_digest: str
    artifact_uri: str
    environment_hash: str


class NewVersion(_NewVersionKeys, total=False):
    """What :meth:`Registry.register_version` takes; the lineage left out is empty."""

    data_fingerprints: Mapping[str, str] | None
    params: JSONObject | None
    metrics: Mapping[str, float] | None
    image: str | None


@dataclass(frozen=True)
class ModelSummary:
    """One model of the registry: how many versions it has, and its latest one."""

    model: str
    versions: int
    latest: int
    latest_at: datetime


@dataclass(frozen=True)
class ModelPage:
    """One page of :meth:`Registry.page_models`, and how many models match in all."""

    models: list[ModelSummary]
    total: int


class ModelQuery(TypedDict, total=False):
    """What :meth:`Registry.page_models` takes; left out: every model, by name, the first 50."""

    search: str | None  # a part of the name, any case
    sort: ModelSort
    offset: int
    limit: int


class Registry(Protocol):
    """Model versions, numbered per model and never changed."""

    def register_version(self, **version: Unpack[NewVersion]) -> ModelVersion:
        """Register the next version of ``model``; the same run again returns the version it already made."""
        ...

    def get_version(self, model: str, number: int) -> ModelVersion: ...

    def latest_version(self, model: str) -> ModelVersion | None: ...

    def list_versions(self, model: str) -> list[ModelVersion]:
        """Versions of ``model``, oldest first."""
        ...

    def list_models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        ...

    def page_models(self, **query: Unpack[ModelQuery]) -> ModelPage:
        """One page of the models with at least one version (the dashboard's list: thousands of models)."""
        ...

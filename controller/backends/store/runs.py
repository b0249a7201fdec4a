"""Pipeline runs and their steps: what trained, on which commit, with which result, and the run cache.

The proposal reconciler creates and updates runs; a successful run's cache
key lets a later run with the same inputs take its result
(:meth:`RunRecords.find_successful_run`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypedDict, Unpack

from controller.backends.store.common import JSONObject

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "NewRun",
    "Run",
    "RunChanges",
    "RunQuery",
    "RunRecords",
    "RunStatus",
    "StepResult",
]

RunStatus = Literal["queued", "running", "succeeded", "failed", "error", "cancelled"]
TERMINAL_RUN_STATUSES: frozenset[RunStatus] = frozenset({"succeeded", "failed", "error", "cancelled"})


@dataclass(frozen=True)
class StepResult:
    """What one pipeline step did."""

    status: str  # the runner's step status, e.g. succeeded | failed | skipped | running
    duration_seconds: float | None = None
    cache_hit: bool = False
    log_path: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class Run:
    """One pipeline run of one model at one commit, for one ref (a proposal branch or main)."""

    id: int
    model: str
    ref: str
    commit: str
    cache_key: str
    status: RunStatus
    created_at: datetime
    trigger: str = ""  # what asked for it: proposal | merge | schedule | data | drift | manual
    steps: dict[str, StepResult] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    gates: list[JSONObject] = field(default_factory=list)  # the engine's gate results, as JSON
    params: JSONObject = field(default_factory=dict)
    data_fingerprints: dict[str, str] = field(default_factory=dict)
    environment_hash: str | None = None
    artifact_path: str | None = None
    artifact_digest: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    reused_from: int | None = None  # a cache hit: the run whose result this one took
    baseline_version: int | None = None  # the production version its gates were judged against
    image: str | None = None  # reference@digest of the image it ran in (cluster home); None: a virtualenv

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class RunChanges(TypedDict, total=False):
    """The fields :meth:`RunRecords.update_run` may change; the ones left out stay as they are."""

    status: RunStatus
    steps: Mapping[str, StepResult]
    metrics: Mapping[str, float]
    gates: list[JSONObject]
    environment_hash: str | None
    artifact_path: str | None
    artifact_digest: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    baseline_version: int | None
    image: str | None


class _NewRunKeys(TypedDict):
    model: str
    ref: str
    commit: str
    cache_key: str


class NewRun(_NewRunKeys, total=False):
    """What :meth:`RunRecords.create_run` takes; left out: no trigger (``""``), status ``"queued"``, none."""

    trigger: str
    params: JSONObject | None
    data_fingerprints: Mapping[str, str] | None
    environment_hash: str | None
    status: RunStatus
    reused_from: int | None


class RunQuery(TypedDict, total=False):
    """What :meth:`RunRecords.list_runs` returns: runs matching every key given, ``limit`` (100) at most."""

    model: str | None
    ref: str | None
    status: RunStatus | None
    limit: int


class RunRecords(Protocol):
    """Pipeline runs, newest first where a list is asked for."""

    def create_run(self, **run: Unpack[NewRun]) -> Run: ...

    def update_run(self, run_id: int, **changes: Unpack[RunChanges]) -> Run: ...

    def record_step(self, run_id: int, *, step: str, result: StepResult) -> Run:
        """Set one step's result, leaving the other steps' results alone."""
        ...

    def get_run(self, run_id: int) -> Run: ...

    def find_successful_run(self, cache_key: str) -> Run | None: ...

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]:
        """Runs, newest first."""
        ...

    def latest_run(self, *, model: str, ref: str) -> Run | None: ...

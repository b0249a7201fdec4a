"""The durable state store: what Flywheel remembers between restarts.

The engine, the webhook service and the CLI keep everything that must survive
a crash here: the inbox of incoming events, pipeline runs, immutable model
versions, rollouts, serving history, approvals, the append-only audit log,
the outbox of messages to deliver, and a small key-value table.

This module holds the narrow :class:`Store` interface, the frozen records it
hands out and :func:`open_store`, which picks the implementation by location.
There is one implementation, :class:`controller.backends.store.sql.SqlStore`
(SQLAlchemy Core; SQLite in WAL mode on the embedded home, PostgreSQL on the
cluster home). It doubles as the fake: tests open a store on a temporary
directory (or ``open_store("sqlite://")`` for a single-threaded in-memory
one), which behaves exactly like production, constraints and all.

Conventions:

* Every time is a timezone-aware UTC :class:`~datetime.datetime`; naive ones
  are refused. A method that records "now" uses the store's clock, the
  :class:`~controller.clock.Clock` it was opened with (never the machine's
  own: one clock for the whole controller).
* Every method taking more than the record's id is keyword-only.
* Every single method is atomic. :meth:`Store.transaction` groups several
  calls into one transaction (all or nothing).
* Structured detail (metrics, params, step results, payloads) is JSON: the
  values given must be JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, Unpack

from controller.clock import Clock

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_DB_NAME",
    "TERMINAL_RUN_STATUSES",
    "Approval",
    "ApprovalChannel",
    "AuditEntry",
    "CommitStatus",
    "Conflict",
    "Decision",
    "InboxEvent",
    "ModelVersion",
    "NotFound",
    "OutboxMessage",
    "Review",
    "ReviewState",
    "RolloutChanges",
    "RolloutRecord",
    "Run",
    "RunChanges",
    "RunStatus",
    "SchemaTooNew",
    "ServingRecord",
    "StepResult",
    "Store",
    "StoreError",
    "open_store",
    "state_url",
]

DEFAULT_STATE_DIR = ".flywheel"
STATE_DB_NAME = "state.db"

JSONObject = dict[str, Any]

RunStatus = Literal["queued", "running", "succeeded", "failed", "error", "cancelled"]
TERMINAL_RUN_STATUSES: frozenset[RunStatus] = frozenset({"succeeded", "failed", "error", "cancelled"})
Decision = Literal["approve", "reject"]
ApprovalChannel = Literal["cli", "github", "slack"]
ReviewState = Literal["pending", "success", "failure", "error"]


# -------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class NotFound(StoreError, LookupError):
    """The record asked for does not exist."""


class Conflict(StoreError):
    """A compare-and-set update lost: the record changed since it was read."""

    def __init__(self, what: str, *, expected: int, actual: int) -> None:
        super().__init__(f"{what} changed: expected revision {expected}, found {actual}; re-read and retry")
        self.expected = expected
        self.actual = actual


class SchemaTooNew(StoreError):
    """The database was migrated by a newer Flywheel than this one."""


# ------------------------------------------------------------------- records


@dataclass(frozen=True)
class InboxEvent:
    """One event from a webhook, the poller, a timer or Slack, waiting to be reconciled.

    ``(source, delivery_id)`` is unique: a redelivery is dropped at the door.
    """

    id: int
    source: str  # github | poll | timer | slack | cli
    delivery_id: str
    kind: str  # e.g. "push", "pull_request", "schedule", "block_actions"
    payload: JSONObject
    received_at: datetime
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None  # after this, another worker may claim it again
    attempts: int = 0
    completed_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class StepResult:
    """What one pipeline step did."""

    status: str  # the runner's step status, e.g. succeeded | failed | skipped | running
    duration_seconds: float | None = None
    cache_hit: bool = False
    log_path: str | None = None
    exit_code: int | None = None

    def to_json(self) -> JSONObject:
        return {
            "status": self.status,
            "duration_seconds": self.duration_seconds,
            "cache_hit": self.cache_hit,
            "log_path": self.log_path,
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepResult:
        return cls(
            status=str(data["status"]),
            duration_seconds=data.get("duration_seconds"),
            cache_hit=bool(data.get("cache_hit", False)),
            log_path=data.get("log_path"),
            exit_code=data.get("exit_code"),
        )


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

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


@dataclass(frozen=True)
class Review:
    """The local forge's report of one model on one proposal, and its latest status."""

    proposal: str
    model: str
    commit: str
    state: ReviewState
    description: str
    body: str
    updated_at: datetime


@dataclass(frozen=True)
class CommitStatus:
    proposal: str
    model: str
    commit: str
    state: ReviewState
    description: str
    at: datetime


class RunChanges(TypedDict, total=False):
    """The fields :meth:`Store.update_run` may change; the ones left out stay as they are."""

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


@dataclass(frozen=True)
class RolloutRecord:
    """Progress of one model version through a sequence of environments.

    ``state`` is the engine's to define; the store only knows that a rollout
    with no ``finished_at`` is active. ``revision`` moves on every update, so
    that concurrent writers can compare-and-set.
    """

    id: int
    model: str
    version: int
    stages: tuple[str, ...]  # environment names, in order
    state: str
    stage_index: int
    step_index: int  # canary step within the current stage
    weight: int  # percent of traffic on the new version in the current stage
    analysis_failures: int
    paused: bool
    revision: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    detail: JSONObject = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.finished_at is None

    @property
    def environment(self) -> str | None:
        """The environment of the current stage (``None`` past the last one)."""
        return self.stages[self.stage_index] if 0 <= self.stage_index < len(self.stages) else None


class RolloutChanges(TypedDict, total=False):
    """The fields :meth:`Store.update_rollout` may change."""

    state: str
    stage_index: int
    step_index: int
    weight: int
    analysis_failures: int
    paused: bool
    finished_at: datetime | None
    detail: JSONObject


@dataclass(frozen=True)
class ServingRecord:
    """From ``at`` on, ``version`` of ``model`` took ``weight`` percent of ``environment``'s traffic."""

    id: int
    environment: str
    model: str
    version: int
    weight: int
    at: datetime


@dataclass(frozen=True)
class Approval:
    """A decision on one model version for one environment."""

    id: int
    model: str
    version: int
    environment: str
    user: str
    decision: Decision
    channel: ApprovalChannel
    comment: str
    created_at: datetime
    expires_at: datetime | None = None

    def valid_at(self, when: datetime) -> bool:
        return self.expires_at is None or when < self.expires_at


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log: who did what, to what, and why."""

    id: int
    at: datetime
    actor: str
    action: str
    model: str | None = None
    version: int | None = None
    environment: str | None = None
    detail: JSONObject = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxMessage:
    """A message to deliver to an outside service, retried until it is sent.

    ``revision`` moves whenever the payload is replaced, so that marking an
    older payload as sent does not swallow a newer one.
    """

    id: int
    destination: str  # github | slack | ...
    key: str  # idempotency key, unique
    payload: JSONObject
    revision: int
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None  # None once sent or given up
    sent_at: datetime | None = None
    last_error: str | None = None


# ----------------------------------------------------------------- interface


class Store(Protocol):
    """Durable state: the one place the controller keeps what it must not forget."""

    def transaction(self) -> AbstractContextManager[None]:
        """Run the calls made inside the block in one transaction; nested blocks join the outer one."""
        ...

    def close(self) -> None: ...

    # inbox
    def put_event(
        self,
        *,
        source: str,
        delivery_id: str,
        kind: str,
        payload: JSONObject,
        received_at: datetime | None = None,
    ) -> bool:
        """Store an event; ``False`` (and nothing stored) when ``(source, delivery_id)`` was seen before."""
        ...

    def claim_events(self, *, limit: int, worker: str, lease_seconds: float = 300.0) -> list[InboxEvent]:
        """Claim up to ``limit`` unfinished events, oldest first, including ones whose claim expired."""
        ...

    def complete_event(self, event_id: int, *, error: str | None = None) -> None: ...

    def get_event(self, event_id: int) -> InboxEvent: ...

    def prune_events(self, *, before: datetime) -> int:
        """Forget completed events received before ``before`` (their delivery ids stop deduplicating)."""
        ...

    # runs
    def create_run(
        self,
        *,
        model: str,
        ref: str,
        commit: str,
        cache_key: str,
        trigger: str = "",
        params: JSONObject | None = None,
        data_fingerprints: Mapping[str, str] | None = None,
        environment_hash: str | None = None,
        status: RunStatus = "queued",
        reused_from: int | None = None,
    ) -> Run: ...

    def update_run(self, run_id: int, **changes: Unpack[RunChanges]) -> Run: ...

    def record_step(self, run_id: int, *, step: str, result: StepResult) -> Run:
        """Set one step's result, leaving the other steps' results alone."""
        ...

    def get_run(self, run_id: int) -> Run: ...

    def find_successful_run(self, cache_key: str) -> Run | None: ...

    def list_runs(
        self,
        *,
        model: str | None = None,
        ref: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs, newest first."""
        ...

    def latest_run(self, *, model: str, ref: str) -> Run | None: ...

    # model versions
    def register_version(
        self,
        *,
        model: str,
        run_id: int,
        commit: str,
        artifact_digest: str,
        artifact_uri: str,
        environment_hash: str,
        data_fingerprints: Mapping[str, str] | None = None,
        params: JSONObject | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> ModelVersion:
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

    # rollouts
    def create_rollout(
        self,
        *,
        model: str,
        version: int,
        stages: tuple[str, ...] | list[str],
        state: str,
        detail: JSONObject | None = None,
    ) -> RolloutRecord:
        """Start a rollout; for an existing ``(model, version, stages)`` return that one unchanged."""
        ...

    def get_rollout(self, rollout_id: int) -> RolloutRecord: ...

    def update_rollout(
        self, rollout_id: int, *, expected_revision: int, **changes: Unpack[RolloutChanges]
    ) -> RolloutRecord:
        """Apply ``changes`` if still at ``expected_revision``; else raise :class:`Conflict`."""
        ...

    def active_rollouts(self) -> list[RolloutRecord]: ...

    def rollouts_for(self, model: str) -> list[RolloutRecord]:
        """Rollouts of ``model``, newest first."""
        ...

    # serving history
    def record_serving(
        self, *, environment: str, model: str, version: int, weight: int, at: datetime | None = None
    ) -> ServingRecord:
        """From ``at`` on, ``version`` takes ``weight`` percent (0 = no longer serving)."""
        ...

    def record_traffic(
        self, *, environment: str, model: str, weights: Mapping[int, int], at: datetime | None = None
    ) -> list[ServingRecord]:
        """Record a whole traffic split: versions serving before but absent from ``weights`` drop to 0."""
        ...

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]:
        """``(version, weight)`` pairs serving at ``at``, by version; weight-0 versions left out."""
        ...

    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]: ...

    # approvals
    def add_approval(
        self,
        *,
        model: str,
        version: int,
        environment: str,
        user: str,
        decision: Decision,
        channel: ApprovalChannel,
        comment: str = "",
        expires_at: datetime | None = None,
    ) -> Approval: ...

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]:
        """Every decision on this version for this environment, oldest first, expired ones included."""
        ...

    # audit log
    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        model: str | None = None,
        version: int | None = None,
        environment: str | None = None,
        detail: JSONObject | None = None,
    ) -> AuditEntry: ...

    def audit(
        self, *, model: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Entries oldest first; with ``limit``, the newest ``limit`` of them."""
        ...

    # outbox
    def enqueue(
        self, *, destination: str, key: str, payload: JSONObject, replace: bool = True
    ) -> OutboxMessage:
        """Queue a message; for a known ``key`` replace its payload (newest wins) and never duplicate it.

        A message already sent with the very same payload is left alone; with a
        different payload it is due again. With ``replace=False`` a known key is
        left exactly as it is (a one-off event, such as a notification repeated
        after a crash, is announced once).
        """
        ...

    def due_messages(self, *, now: datetime | None = None, limit: int = 100) -> list[OutboxMessage]: ...

    def mark_sent(self, message_id: int, *, revision: int | None = None) -> bool:
        """Mark sent; ``False`` (still due) when ``revision`` is given and the payload was replaced since."""
        ...

    def mark_failed(self, message_id: int, *, error: str, retry_at: datetime | None) -> None:
        """Count a failed attempt; retry at ``retry_at``, or never when it is ``None``."""
        ...

    def get_message(self, message_id: int) -> OutboxMessage: ...

    # key-value
    # reviews (the local forge)
    def save_review(
        self,
        *,
        proposal: str,
        model: str,
        commit: str,
        body: str | None = None,
        state: ReviewState | None = None,
        description: str | None = None,
    ) -> Review:
        """Create or update in place the review of ``model`` on ``proposal``.

        ``body`` left out keeps the current report; ``state`` given also appends
        to the commit's status history. A new commit starts ``pending``.
        """
        ...

    def reviews(self, *, proposal: str | None = None, model: str | None = None) -> list[Review]: ...

    def commit_statuses(self, *, proposal: str, model: str) -> list[CommitStatus]: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


# ------------------------------------------------------------------- opening


def state_url(location: str | Path | None = None) -> str:
    """The database URL for ``location``: ``None`` → ``./.flywheel/state.db``, ``<dir>`` → ``<dir>/state.db``.

    A string with ``://`` is taken as an SQLAlchemy URL as it is. Directories
    are created as needed.
    """
    if isinstance(location, str) and "://" in location:
        return location
    directory = Path.cwd() / DEFAULT_STATE_DIR if location is None else Path(location)
    if directory.suffix == ".db" and not directory.is_dir():
        path = directory  # a database file named directly
    else:
        path = directory / STATE_DB_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_store(location: str | Path | None, *, clock: Clock) -> Store:
    """Open (creating and migrating as needed) the store at ``location``; see :func:`state_url`.

    ``clock`` stamps every "now" the store records (received, created, due, sent).
    """
    from controller.backends.store.sql import SqlStore

    return SqlStore(state_url(location), clock=clock)

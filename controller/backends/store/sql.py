"""The state store on SQLAlchemy Core: SQLite (WAL) on one machine, PostgreSQL on a cluster.

:func:`controller.backends.store.open_store` builds a :class:`SqlStore`; the
engine, the webhook service and the CLI use it through the
:class:`~controller.backends.store.Store` interface.

Opening a store applies the Alembic migrations shipped in ``migrations/``
(idempotent, and refused with :class:`SchemaTooNew` when the database was
migrated by a newer Flywheel). All SQL here is portable; the only
dialect-specific parts are the SQLite connection setup (pragmas, and
``BEGIN IMMEDIATE`` for writing transactions so that concurrent writers
queue on the busy timeout instead of failing) and the choice of the
``INSERT ... ON CONFLICT`` construct, which both dialects spell the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Unpack

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from controller.backends.store import (
    Approval,
    ApprovalChannel,
    AuditEntry,
    CommitStatus,
    Conflict,
    Decision,
    InboxEvent,
    JSONObject,
    ModelVersion,
    NotFound,
    OutboxMessage,
    Review,
    ReviewState,
    RolloutChanges,
    RolloutRecord,
    Run,
    RunChanges,
    RunStatus,
    SchemaTooNew,
    ServingRecord,
    StepResult,
)
from controller.clock import Clock

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DEFAULT_BUSY_TIMEOUT_MS = 10_000
_READ_ONLY = "flywheel_read_only"


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _checked_times(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` with every datetime checked to be aware and turned to UTC."""
    return {
        name: _aware(value, name) if isinstance(value, datetime) else value for name, value in changes.items()
    }


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _aware(value, "time")
        # SQLite keeps text; without an offset the text sorts in time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ------------------------------------------------------------------- tables
# The query-side mirror of migrations/versions/*.py. The migrations create
# the schema; these definitions only describe it to SQLAlchemy.

metadata = MetaData()


def _time(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


def _json(name: str) -> Column[Any]:
    return Column(name, JSON(), nullable=False)


def _version_fk(name: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["model", "version"], ["model_versions.model", "model_versions.number"], name=name
    )


meta_table = Table(
    "meta",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text(), nullable=False),
    _time("updated_at"),
)

inbox = Table(
    "inbox_events",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("delivery_id", String(255), nullable=False),
    Column("kind", String(128), nullable=False),
    _json("payload"),
    _time("received_at"),
    Column("claimed_by", String(255)),
    _time("claimed_at", nullable=True),
    _time("lease_expires_at", nullable=True),
    Column("attempts", Integer(), nullable=False),
    _time("completed_at", nullable=True),
    Column("error", Text()),
    UniqueConstraint("source", "delivery_id", name="uq_inbox_events_delivery"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("ref", String(255), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("cache_key", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger", String(64), nullable=False),
    _json("steps"),
    _json("metrics"),
    _json("gates"),
    _json("params"),
    _json("data_fingerprints"),
    Column("environment_hash", String(255)),
    Column("artifact_path", Text()),
    Column("artifact_digest", String(255)),
    _time("created_at"),
    _time("started_at", nullable=True),
    _time("finished_at", nullable=True),
    Column("error", Text()),
    Column("reused_from", Integer()),
    Column("baseline_version", Integer()),
)

versions = Table(
    "model_versions",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("content_id", String(255), nullable=False),
    Column("run_id", Integer(), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("artifact_digest", String(255), nullable=False),
    Column("artifact_uri", Text(), nullable=False),
    Column("environment_hash", String(255), nullable=False),
    _json("data_fingerprints"),
    _json("params"),
    _json("metrics"),
    _time("created_at"),
    UniqueConstraint("model", "run_id", name="uq_model_versions_run"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    _json("stages"),
    Column("stages_key", String(1024), nullable=False),
    Column("state", String(64), nullable=False),
    Column("stage_index", Integer(), nullable=False),
    Column("step_index", Integer(), nullable=False),
    Column("weight", Integer(), nullable=False),
    Column("analysis_failures", Integer(), nullable=False),
    Column("paused", Boolean(), nullable=False),
    Column("revision", Integer(), nullable=False),
    _json("detail"),
    _time("created_at"),
    _time("updated_at"),
    _time("finished_at", nullable=True),
    _version_fk("fk_rollouts_version"),
    UniqueConstraint("model", "version", "stages_key", name="uq_rollouts_stages"),
)

serving = Table(
    "serving",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("environment", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("weight", Integer(), nullable=False),
    _time("at"),
    _version_fk("fk_serving_version"),
    CheckConstraint("weight >= 0 AND weight <= 100", name="ck_serving_weight"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("environment", String(255), nullable=False),
    Column("user", String(255), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("comment", Text(), nullable=False),
    _time("created_at"),
    _time("expires_at", nullable=True),
    _version_fk("fk_approvals_version"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    _time("at"),
    Column("actor", String(255), nullable=False),
    Column("action", String(128), nullable=False),
    Column("model", String(255)),
    Column("version", Integer()),
    Column("environment", String(255)),
    _json("detail"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("destination", String(64), nullable=False),
    Column("key", String(512), nullable=False),
    _json("payload"),
    Column("revision", Integer(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    _time("created_at"),
    _time("updated_at"),
    _time("next_attempt_at", nullable=True),
    _time("sent_at", nullable=True),
    Column("last_error", Text()),
    UniqueConstraint("key", name="uq_outbox_key"),
)


reviews = Table(
    "reviews",
    metadata,
    Column("proposal", String(255), primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("commit", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", Text(), nullable=False),
    Column("body", Text(), nullable=False),
    _time("updated_at"),
)

commit_statuses = Table(
    "commit_statuses",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("proposal", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", Text(), nullable=False),
    _time("at"),
)


# ---------------------------------------------------------------- migrations


def alembic_config() -> Config:
    """An Alembic configuration pointing at the shipped migrations; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision this code knows, in one transaction.

    Idempotent. Raises :class:`SchemaTooNew` when the database carries a
    revision this code has never heard of.
    """
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    known = {script.revision for script in scripts.walk_revisions()}
    heads = set(scripts.get_heads())
    with engine.begin() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        unknown = sorted(current - known)
        if unknown:
            raise SchemaTooNew(
                f"the state database at {engine.url.render_as_string(hide_password=True)} has schema "
                f"revision {', '.join(unknown)}, newer than this Flywheel knows "
                f"(up to {', '.join(sorted(heads))}); "
                "upgrade Flywheel, or point it at another state directory"
            )
        if current == heads:
            return
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def schema_revision(engine: Engine) -> tuple[str, ...]:
    """The schema revision(s) the database is at (empty before the first migration)."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        return tuple(MigrationContext.configure(conn).get_current_heads())


# --------------------------------------------------------------------- store


def json_text(value: Any) -> str:
    """The text a JSON column stores for ``value``.

    A value that already knows its JSON text says so with a ``__json_text__()``
    method (the webhook receiver's payloads do: the verified body they were
    parsed from), and that text is stored as it is instead of serialising the
    object again; it must be the JSON text of exactly that value. Anything
    else goes through :func:`json.dumps`.
    """
    known = getattr(value, "__json_text__", None)
    if known is not None:
        text = known()
        if isinstance(text, str):
            return text
    return json.dumps(value)


def build_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url``; for SQLite, every connection is set up for WAL and queued writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, json_serializer=json_text)
    memory = parsed.database in (None, "", ":memory:")
    if memory:
        # One shared connection, so the whole program sees one database; single-threaded use only.
        engine = create_engine(
            parsed,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            json_serializer=json_text,
        )
    else:
        engine = create_engine(parsed, json_serializer=json_text)

    @event.listens_for(engine, "connect")
    def _setup(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock up front, so it waits on busy_timeout
        # rather than failing when another writer got there first.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _dumps_roundtrip(value: Any) -> Any:
    """What ``value`` looks like after a trip through a JSON column."""
    return json.loads(json.dumps(value))


def content_id(
    *,
    model: str,
    commit: str,
    artifact_digest: str,
    environment_hash: str,
    data_fingerprints: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    """The digest that identifies what a model version ships."""
    canonical = json.dumps(
        {
            "model": model,
            "commit": commit,
            "artifact_digest": artifact_digest,
            "environment_hash": environment_hash,
            "data_fingerprints": dict(data_fingerprints),
            "params": dict(params),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class SqlStore:
    """:class:`~controller.backends.store.Store` on a SQLAlchemy engine."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        self._engine = build_engine(url, busy_timeout_ms=busy_timeout_ms)
        self._clock = clock
        self._tx: ContextVar[Connection | None] = ContextVar(f"flywheel_store_tx_{id(self)}", default=None)
        dialect = self._engine.dialect.name
        self._upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        try:
            migrate(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._put_event = self._upsert(inbox).on_conflict_do_nothing(index_elements=["source", "delivery_id"])

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        return _aware(self._clock.now(), "clock.now()")

    # ------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._tx.get() is not None:
            yield  # join the enclosing transaction
            return
        with self._engine.begin() as conn:
            token = self._tx.set(conn)
            try:
                yield
            finally:
                self._tx.reset(token)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        conn = self._tx.get()
        if conn is not None:
            yield conn
            return
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        conn = self._tx.get()
        if conn is not None:
            yield conn
            return
        with self._engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            yield conn

    # -------------------------------------------------------------- inbox

    def put_event(
        self,
        *,
        source: str,
        delivery_id: str,
        kind: str,
        payload: JSONObject,
        received_at: datetime | None = None,
    ) -> bool:
        params = {
            "source": source,
            "delivery_id": delivery_id,
            "kind": kind,
            "payload": payload,
            "received_at": self._now() if received_at is None else _aware(received_at, "received_at"),
            "attempts": 0,
        }
        with self._write() as conn:
            return conn.execute(self._put_event, params).rowcount == 1

    def claim_events(self, *, limit: int, worker: str, lease_seconds: float = 300.0) -> list[InboxEvent]:
        now = self._now()
        claimable = and_(
            inbox.c.completed_at.is_(None),
            or_(inbox.c.lease_expires_at.is_(None), inbox.c.lease_expires_at <= now),
        )
        with self._write() as conn:
            ids = list(
                conn.execute(
                    select(inbox.c.id)
                    .where(claimable)
                    .order_by(inbox.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's write lock does the same
                ).scalars()
            )
            if not ids:
                return []
            conn.execute(
                update(inbox)
                .where(inbox.c.id.in_(ids))
                .values(
                    claimed_by=worker,
                    claimed_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=inbox.c.attempts + 1,
                )
            )
            rows = conn.execute(select(inbox).where(inbox.c.id.in_(ids)).order_by(inbox.c.id)).mappings()
            return [_event(row) for row in rows]

    def complete_event(self, event_id: int, *, error: str | None = None) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(inbox).where(inbox.c.id == event_id).values(completed_at=self._now(), error=error)
            )
            if result.rowcount == 0:
                raise NotFound(f"no inbox event {event_id}")

    def get_event(self, event_id: int) -> InboxEvent:
        with self._read() as conn:
            row = conn.execute(select(inbox).where(inbox.c.id == event_id)).mappings().first()
        if row is None:
            raise NotFound(f"no inbox event {event_id}")
        return _event(row)

    def prune_events(self, *, before: datetime) -> int:
        cutoff = _aware(before, "before")
        with self._write() as conn:
            result = conn.execute(
                delete(inbox).where(inbox.c.completed_at.is_not(None), inbox.c.received_at < cutoff)
            )
            return result.rowcount

    # --------------------------------------------------------------- runs

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
    ) -> Run:
        with self._write() as conn:
            result = conn.execute(
                insert(runs).values(
                    reused_from=reused_from,
                    model=model,
                    ref=ref,
                    commit=commit,
                    cache_key=cache_key,
                    status=status,
                    trigger=trigger,
                    steps={},
                    metrics={},
                    gates=[],
                    params=dict(params or {}),
                    data_fingerprints=dict(data_fingerprints or {}),
                    environment_hash=environment_hash,
                    created_at=self._now(),
                )
            )
            return _get_run(conn, _new_id(result))

    def update_run(self, run_id: int, **changes: Unpack[RunChanges]) -> Run:
        unknown = set(changes) - RunChanges.__optional_keys__
        if unknown:
            raise TypeError(f"update_run() cannot change {', '.join(sorted(unknown))}")
        values = _checked_times(changes)
        if "steps" in changes:
            values["steps"] = {name: result.to_json() for name, result in changes["steps"].items()}
        if "metrics" in changes:
            values["metrics"] = dict(changes["metrics"])
        with self._write() as conn:
            if (
                values
                and conn.execute(update(runs).where(runs.c.id == run_id).values(**values)).rowcount == 0
            ):
                raise NotFound(f"no run {run_id}")
            return _get_run(conn, run_id)

    def record_step(self, run_id: int, *, step: str, result: StepResult) -> Run:
        with self._write() as conn:
            steps = conn.execute(select(runs.c.steps).where(runs.c.id == run_id)).scalar_one_or_none()
            if steps is None:
                raise NotFound(f"no run {run_id}")
            steps = {**steps, step: result.to_json()}
            conn.execute(update(runs).where(runs.c.id == run_id).values(steps=steps))
            return _get_run(conn, run_id)

    def get_run(self, run_id: int) -> Run:
        with self._read() as conn:
            return _get_run(conn, run_id)

    def find_successful_run(self, cache_key: str) -> Run | None:
        with self._read() as conn:
            row = (
                conn.execute(
                    select(runs)
                    .where(runs.c.cache_key == cache_key, runs.c.status == "succeeded")
                    .order_by(runs.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else _run(row)

    def list_runs(
        self,
        *,
        model: str | None = None,
        ref: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(runs.c.model == model)
        if ref is not None:
            query = query.where(runs.c.ref == ref)
        if status is not None:
            query = query.where(runs.c.status == status)
        with self._read() as conn:
            return [_run(row) for row in conn.execute(query).mappings()]

    def latest_run(self, *, model: str, ref: str) -> Run | None:
        found = self.list_runs(model=model, ref=ref, limit=1)
        return found[0] if found else None

    # ------------------------------------------------------ model versions

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
        fingerprints = dict(data_fingerprints or {})
        params = dict(params or {})
        with self._write() as conn:
            existing = (
                conn.execute(select(versions).where(versions.c.model == model, versions.c.run_id == run_id))
                .mappings()
                .first()
            )
            if existing is not None:
                return _version(existing)
            last = conn.execute(
                select(func.max(versions.c.number)).where(versions.c.model == model)
            ).scalar_one_or_none()
            number = (last or 0) + 1
            conn.execute(
                insert(versions).values(
                    model=model,
                    number=number,
                    content_id=content_id(
                        model=model,
                        commit=commit,
                        artifact_digest=artifact_digest,
                        environment_hash=environment_hash,
                        data_fingerprints=fingerprints,
                        params=params,
                    ),
                    run_id=run_id,
                    commit=commit,
                    artifact_digest=artifact_digest,
                    artifact_uri=artifact_uri,
                    environment_hash=environment_hash,
                    data_fingerprints=fingerprints,
                    params=params,
                    metrics=dict(metrics or {}),
                    created_at=self._now(),
                )
            )
            return _get_version(conn, model, number)

    def get_version(self, model: str, number: int) -> ModelVersion:
        with self._read() as conn:
            return _get_version(conn, model, number)

    def latest_version(self, model: str) -> ModelVersion | None:
        with self._read() as conn:
            row = (
                conn.execute(
                    select(versions)
                    .where(versions.c.model == model)
                    .order_by(versions.c.number.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else _version(row)

    def list_versions(self, model: str) -> list[ModelVersion]:
        with self._read() as conn:
            rows = conn.execute(
                select(versions).where(versions.c.model == model).order_by(versions.c.number)
            ).mappings()
            return [_version(row) for row in rows]

    def list_models(self) -> list[str]:
        with self._read() as conn:
            return list(
                conn.execute(select(versions.c.model).distinct().order_by(versions.c.model)).scalars()
            )

    # ------------------------------------------------------------ rollouts

    def create_rollout(
        self,
        *,
        model: str,
        version: int,
        stages: tuple[str, ...] | list[str],
        state: str,
        detail: JSONObject | None = None,
    ) -> RolloutRecord:
        stage_list = list(stages)
        if not stage_list:
            raise ValueError("a rollout needs at least one stage")
        stages_key = json.dumps(stage_list, separators=(",", ":"))
        now = self._now()
        with self._write() as conn:
            existing = conn.execute(
                select(rollouts.c.id).where(
                    rollouts.c.model == model,
                    rollouts.c.version == version,
                    rollouts.c.stages_key == stages_key,
                )
            ).scalar_one_or_none()
            if existing is not None:
                return _get_rollout(conn, existing)
            result = conn.execute(
                insert(rollouts).values(
                    model=model,
                    version=version,
                    stages=stage_list,
                    stages_key=stages_key,
                    state=state,
                    stage_index=0,
                    step_index=0,
                    weight=0,
                    analysis_failures=0,
                    paused=False,
                    revision=1,
                    detail=dict(detail or {}),
                    created_at=now,
                    updated_at=now,
                )
            )
            return _get_rollout(conn, _new_id(result))

    def get_rollout(self, rollout_id: int) -> RolloutRecord:
        with self._read() as conn:
            return _get_rollout(conn, rollout_id)

    def update_rollout(
        self, rollout_id: int, *, expected_revision: int, **changes: Unpack[RolloutChanges]
    ) -> RolloutRecord:
        unknown = set(changes) - RolloutChanges.__optional_keys__
        if unknown:
            raise TypeError(f"update_rollout() cannot change {', '.join(sorted(unknown))}")
        with self._write() as conn:
            result = conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id, rollouts.c.revision == expected_revision)
                .values(**_checked_times(changes), revision=rollouts.c.revision + 1, updated_at=self._now())
            )
            if result.rowcount == 0:
                actual = conn.execute(
                    select(rollouts.c.revision).where(rollouts.c.id == rollout_id)
                ).scalar_one_or_none()
                if actual is None:
                    raise NotFound(f"no rollout {rollout_id}")
                raise Conflict(f"rollout {rollout_id}", expected=expected_revision, actual=actual)
            return _get_rollout(conn, rollout_id)

    def active_rollouts(self) -> list[RolloutRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(rollouts).where(rollouts.c.finished_at.is_(None)).order_by(rollouts.c.id)
            ).mappings()
            return [_rollout(row) for row in rows]

    def rollouts_for(self, model: str) -> list[RolloutRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(rollouts).where(rollouts.c.model == model).order_by(rollouts.c.id.desc())
            ).mappings()
            return [_rollout(row) for row in rows]

    # ----------------------------------------------------- serving history

    def record_serving(
        self, *, environment: str, model: str, version: int, weight: int, at: datetime | None = None
    ) -> ServingRecord:
        if not 0 <= weight <= 100:
            raise ValueError(f"weight is a percentage, got {weight}")
        when = self._now() if at is None else _aware(at, "at")
        with self._write() as conn:
            result = conn.execute(
                insert(serving).values(
                    environment=environment, model=model, version=version, weight=weight, at=when
                )
            )
            return ServingRecord(
                id=_new_id(result),
                environment=environment,
                model=model,
                version=version,
                weight=weight,
                at=when,
            )

    def record_traffic(
        self, *, environment: str, model: str, weights: Mapping[int, int], at: datetime | None = None
    ) -> list[ServingRecord]:
        when = self._now() if at is None else _aware(at, "at")
        if sum(weights.values()) > 100:
            raise ValueError(f"weights add up to more than 100: {dict(weights)}")
        with self.transaction():
            before = dict(self.served_at(environment=environment, model=model, at=when))
            target = {version: 0 for version in before} | dict(weights)
            return [
                self.record_serving(
                    environment=environment, model=model, version=version, weight=weight, at=when
                )
                for version, weight in sorted(target.items())
                if before.get(version, 0) != weight
            ]

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]:
        ranked = (
            select(
                serving.c.version,
                serving.c.weight,
                func.row_number()
                .over(partition_by=serving.c.version, order_by=(serving.c.at.desc(), serving.c.id.desc()))
                .label("rank"),
            )
            .where(
                serving.c.environment == environment,
                serving.c.model == model,
                serving.c.at <= _aware(at, "at"),
            )
            .subquery()
        )
        query = (
            select(ranked.c.version, ranked.c.weight)
            .where(ranked.c.rank == 1, ranked.c.weight > 0)
            .order_by(ranked.c.version)
        )
        with self._read() as conn:
            return [(int(version), int(weight)) for version, weight in conn.execute(query)]

    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(serving)
                .where(serving.c.environment == environment, serving.c.model == model)
                .order_by(serving.c.at, serving.c.id)
            ).mappings()
            return [
                ServingRecord(
                    id=row["id"],
                    environment=row["environment"],
                    model=row["model"],
                    version=row["version"],
                    weight=row["weight"],
                    at=row["at"],
                )
                for row in rows
            ]

    # ----------------------------------------------------------- approvals

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
    ) -> Approval:
        values = {
            "model": model,
            "version": version,
            "environment": environment,
            "user": user,
            "decision": decision,
            "channel": channel,
            "comment": comment,
            "created_at": self._now(),
            "expires_at": None if expires_at is None else _aware(expires_at, "expires_at"),
        }
        with self._write() as conn:
            result = conn.execute(insert(approvals).values(**values))
            row = conn.execute(select(approvals).where(approvals.c.id == _new_id(result))).mappings().one()
            return _approval(row)

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]:
        with self._read() as conn:
            rows = conn.execute(
                select(approvals)
                .where(
                    approvals.c.model == model,
                    approvals.c.version == version,
                    approvals.c.environment == environment,
                )
                .order_by(approvals.c.id)
            ).mappings()
            return [_approval(row) for row in rows]

    # ----------------------------------------------------------- audit log

    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        model: str | None = None,
        version: int | None = None,
        environment: str | None = None,
        detail: JSONObject | None = None,
    ) -> AuditEntry:
        at = self._now()
        body = dict(detail or {})
        with self._write() as conn:
            result = conn.execute(
                insert(audit_log).values(
                    at=at,
                    actor=actor,
                    action=action,
                    model=model,
                    version=version,
                    environment=environment,
                    detail=body,
                )
            )
        return AuditEntry(
            id=_new_id(result),
            at=at,
            actor=actor,
            action=action,
            model=model,
            version=version,
            environment=environment,
            detail=_dumps_roundtrip(body),
        )

    def audit(
        self, *, model: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.id.desc())
        if model is not None:
            query = query.where(audit_log.c.model == model)
        if since is not None:
            query = query.where(audit_log.c.at >= _aware(since, "since"))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            entries = [_audit(row) for row in conn.execute(query).mappings()]
        entries.reverse()
        return entries

    # -------------------------------------------------------------- outbox

    def enqueue(
        self, *, destination: str, key: str, payload: JSONObject, replace: bool = True
    ) -> OutboxMessage:
        now = self._now()
        with self._write() as conn:
            inserted = conn.execute(
                self._upsert(outbox)
                .values(
                    destination=destination,
                    key=key,
                    payload=payload,
                    revision=1,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    next_attempt_at=now,
                )
                .on_conflict_do_nothing(index_elements=["key"])
            )
            if inserted.rowcount == 1:
                return _get_message(conn, _new_id(inserted), by="id")
            existing = _get_message(conn, key, by="key", for_update=True)
            if existing.destination != destination:
                raise ValueError(
                    f"outbox key {key!r} belongs to destination {existing.destination!r}, not {destination!r}"
                )
            if not replace or existing.payload == _dumps_roundtrip(payload):
                return existing  # same content, or a one-off event: never send it twice
            conn.execute(
                update(outbox)
                .where(outbox.c.id == existing.id)
                .values(
                    payload=payload,
                    revision=outbox.c.revision + 1,
                    updated_at=now,
                    next_attempt_at=now,
                    sent_at=None,
                )
            )
            return _get_message(conn, existing.id, by="id")

    def due_messages(self, *, now: datetime | None = None, limit: int = 100) -> list[OutboxMessage]:
        when = self._now() if now is None else _aware(now, "now")
        with self._read() as conn:
            rows = conn.execute(
                select(outbox)
                .where(outbox.c.sent_at.is_(None), outbox.c.next_attempt_at <= when)
                .order_by(outbox.c.next_attempt_at, outbox.c.id)
                .limit(limit)
            ).mappings()
            return [_message(row) for row in rows]

    def mark_sent(self, message_id: int, *, revision: int | None = None) -> bool:
        query = update(outbox).where(outbox.c.id == message_id)
        if revision is not None:
            query = query.where(outbox.c.revision == revision)
        now = self._now()
        with self._write() as conn:
            if conn.execute(query.values(sent_at=now, next_attempt_at=None, updated_at=now)).rowcount == 1:
                return True
            _get_message(conn, message_id, by="id")  # raises NotFound when there is no such message
            return False

    def mark_failed(self, message_id: int, *, error: str, retry_at: datetime | None) -> None:
        retry = None if retry_at is None else _aware(retry_at, "retry_at")
        with self._write() as conn:
            result = conn.execute(
                update(outbox)
                .where(outbox.c.id == message_id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    last_error=error,
                    next_attempt_at=retry,
                    updated_at=self._now(),
                )
            )
            if result.rowcount == 0:
                raise NotFound(f"no outbox message {message_id}")

    def get_message(self, message_id: int) -> OutboxMessage:
        with self._read() as conn:
            return _get_message(conn, message_id, by="id")

    # ------------------------------------------------------------- reviews

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
        now = self._now()
        with self._write() as conn:
            row = (
                conn.execute(select(reviews).where(reviews.c.proposal == proposal, reviews.c.model == model))
                .mappings()
                .first()
            )
            same_commit = row is not None and row["commit"] == commit
            values = {
                "commit": commit,
                # A new commit starts pending until a status for it is set.
                "state": state or (row["state"] if row is not None and same_commit else "pending"),
                "description": description
                if description is not None
                else (row["description"] if row is not None and same_commit else ""),
                "body": body if body is not None else (row["body"] if row is not None else ""),
                "updated_at": now,
            }
            if row is None:
                conn.execute(insert(reviews).values(proposal=proposal, model=model, **values))
            else:
                conn.execute(
                    update(reviews)
                    .where(reviews.c.proposal == proposal, reviews.c.model == model)
                    .values(**values)
                )
            if state is not None:
                conn.execute(
                    insert(commit_statuses).values(
                        proposal=proposal,
                        model=model,
                        commit=commit,
                        state=state,
                        description=description or "",
                        at=now,
                    )
                )
            return _review(
                conn.execute(select(reviews).where(reviews.c.proposal == proposal, reviews.c.model == model))
                .mappings()
                .one()
            )

    def reviews(self, *, proposal: str | None = None, model: str | None = None) -> list[Review]:
        query = select(reviews).order_by(reviews.c.proposal, reviews.c.model)
        if proposal is not None:
            query = query.where(reviews.c.proposal == proposal)
        if model is not None:
            query = query.where(reviews.c.model == model)
        with self._read() as conn:
            return [_review(row) for row in conn.execute(query).mappings()]

    def commit_statuses(self, *, proposal: str, model: str) -> list[CommitStatus]:
        query = (
            select(commit_statuses)
            .where(commit_statuses.c.proposal == proposal, commit_statuses.c.model == model)
            .order_by(commit_statuses.c.id)
        )
        with self._read() as conn:
            return [
                CommitStatus(r["proposal"], r["model"], r["commit"], r["state"], r["description"], r["at"])
                for r in conn.execute(query).mappings()
            ]

    # ----------------------------------------------------------- key-value

    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            value = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == key)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        now = self._now()
        statement = self._upsert(meta_table).values(key=key, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": statement.excluded.value, "updated_at": now}
        )
        with self._write() as conn:
            conn.execute(statement)


# -------------------------------------------------------------- row → record


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every table here has an integer key
        raise RuntimeError("the database returned no id for the new row")
    return int(key[0])


def _event(row: RowMapping) -> InboxEvent:
    return InboxEvent(
        id=row["id"],
        source=row["source"],
        delivery_id=row["delivery_id"],
        kind=row["kind"],
        payload=row["payload"],
        received_at=row["received_at"],
        claimed_by=row["claimed_by"],
        claimed_at=row["claimed_at"],
        lease_expires_at=row["lease_expires_at"],
        attempts=row["attempts"],
        completed_at=row["completed_at"],
        error=row["error"],
    )


def _run(row: RowMapping) -> Run:
    return Run(
        id=row["id"],
        model=row["model"],
        ref=row["ref"],
        commit=row["commit"],
        cache_key=row["cache_key"],
        status=row["status"],
        created_at=row["created_at"],
        trigger=row["trigger"],
        steps={name: StepResult.from_json(result) for name, result in row["steps"].items()},
        metrics=row["metrics"],
        gates=row["gates"],
        params=row["params"],
        data_fingerprints=row["data_fingerprints"],
        environment_hash=row["environment_hash"],
        artifact_path=row["artifact_path"],
        artifact_digest=row["artifact_digest"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        reused_from=row["reused_from"],
        baseline_version=row["baseline_version"],
    )


def _review(row: RowMapping) -> Review:
    return Review(
        proposal=row["proposal"],
        model=row["model"],
        commit=row["commit"],
        state=row["state"],
        description=row["description"],
        body=row["body"],
        updated_at=row["updated_at"],
    )


def _get_run(conn: Connection, run_id: int) -> Run:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    return _run(row)


def _version(row: RowMapping) -> ModelVersion:
    return ModelVersion(
        model=row["model"],
        number=row["number"],
        content_id=row["content_id"],
        run_id=row["run_id"],
        commit=row["commit"],
        artifact_digest=row["artifact_digest"],
        artifact_uri=row["artifact_uri"],
        environment_hash=row["environment_hash"],
        created_at=row["created_at"],
        data_fingerprints=row["data_fingerprints"],
        params=row["params"],
        metrics=row["metrics"],
    )


def _get_version(conn: Connection, model: str, number: int) -> ModelVersion:
    row = (
        conn.execute(select(versions).where(versions.c.model == model, versions.c.number == number))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"no version {number} of model {model!r}")
    return _version(row)


def _rollout(row: RowMapping) -> RolloutRecord:
    return RolloutRecord(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        stages=tuple(row["stages"]),
        state=row["state"],
        stage_index=row["stage_index"],
        step_index=row["step_index"],
        weight=row["weight"],
        analysis_failures=row["analysis_failures"],
        paused=bool(row["paused"]),
        revision=row["revision"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        detail=row["detail"],
    )


def _get_rollout(conn: Connection, rollout_id: int) -> RolloutRecord:
    row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
    if row is None:
        raise NotFound(f"no rollout {rollout_id}")
    return _rollout(row)


def _approval(row: RowMapping) -> Approval:
    return Approval(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        environment=row["environment"],
        user=row["user"],
        decision=row["decision"],
        channel=row["channel"],
        comment=row["comment"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _audit(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        model=row["model"],
        version=row["version"],
        environment=row["environment"],
        detail=row["detail"],
    )


def _message(row: RowMapping) -> OutboxMessage:
    return OutboxMessage(
        id=row["id"],
        destination=row["destination"],
        key=row["key"],
        payload=row["payload"],
        revision=row["revision"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        sent_at=row["sent_at"],
        last_error=row["last_error"],
    )


def _get_message(conn: Connection, ident: int | str, *, by: str, for_update: bool = False) -> OutboxMessage:
    column = outbox.c.id if by == "id" else outbox.c.key
    query = select(outbox).where(column == ident)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"no outbox message with {by} {ident!r}")
    return _message(row)


__all__ = [
    "MIGRATIONS_DIR",
    "SqlStore",
    "alembic_config",
    "build_engine",
    "content_id",
    "metadata",
    "migrate",
    "schema_revision",
]

"""The SQL store's foundation: the engine, its SQLite set-up, migrations, time and connection handling.

Every record kind's SQL module (:mod:`.inbox`, :mod:`.runs`, ...) defines a
mixin on :class:`SqlBase`, over the tables of :mod:`.tables`;
:class:`controller.backends.store.sql.SqlStore` is all of them together.

Opening a store applies the Alembic migrations shipped in ``migrations/``
(idempotent, and refused with :class:`SchemaTooNew` when the database was
migrated by a newer Flywheel). All SQL is portable; the only
dialect-specific parts are the SQLite connection setup (pragmas, and
``BEGIN IMMEDIATE`` for writing transactions so that concurrent writers
queue on the busy timeout instead of failing) and the choice of the
``INSERT ... ON CONFLICT`` construct, which both dialects spell the same way.

The base also proves the state may be acted on
(:class:`~controller.backends.store.integrity.StateIntegrity`, which the
composition root checks at start): the directory and the files of an SQLite
database writable, a write really accepted, ``PRAGMA quick_check`` clean;
and :meth:`SqlBase.checkpoint` moves the write-ahead log into the database
(the controller calls it after every tick), so that a lost or cut log file
can cost at most what one tick wrote. Code that must run only once a write
is durable registers it with :meth:`SqlBase._after_commit` (the audit log's
high-water mark does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from controller.backends.store.common import SchemaTooNew, StoreUnreachable
from controller.backends.store.integrity import StateCorrupt, StateNotWritable
from controller.clock import Clock

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "MIGRATIONS_DIR",
    "SqlBase",
    "UTCDateTime",
    "alembic_config",
    "arguments",
    "aware",
    "build_engine",
    "checked_times",
    "database_file",
    "json_text",
    "migrate",
    "new_id",
    "schema_revision",
]

MIGRATIONS_DIR = Path(__file__).parent.with_name("migrations")
DEFAULT_BUSY_TIMEOUT_MS = 10_000
_READ_ONLY = "flywheel_read_only"


def aware(value: datetime, name: str) -> datetime:
    """``value`` in UTC; a naive datetime is refused, naming the argument."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def checked_times(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` with every datetime checked to be aware and turned to UTC."""
    return {
        name: aware(value, name) if isinstance(value, datetime) else value for name, value in changes.items()
    }


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = aware(value, "time")
        # SQLite keeps text; without an offset the text sorts in time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def arguments(
    method: str, kind: Any, given: Mapping[str, Any], *, objects: tuple[str, ...] = (), **defaults: Any
) -> dict[str, Any]:
    """The keyword arguments ``given`` to ``method`` (typed by the TypedDict ``kind``), with ``defaults``.

    A key ``kind`` does not name, or a required one left out, raises
    :class:`TypeError`, as it would for a method that spelt its parameters out.
    The ``objects`` (JSON columns) become plain dicts, empty when left out or ``None``.
    """
    unknown = sorted(set(given) - kind.__required_keys__ - kind.__optional_keys__)
    missing = sorted(kind.__required_keys__ - set(given))
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {', '.join(unknown)}")
    if missing:
        raise TypeError(f"{method}() missing required keyword argument(s) {', '.join(missing)}")
    return {**defaults, **given} | {name: dict(given.get(name) or {}) for name in objects}


def new_id(result: CursorResult[Any]) -> int:
    """The integer key of the row ``result`` inserted."""
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every table inserted this way has an integer key
        raise RuntimeError("the database returned no id for the new row")
    return int(key[0])


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


# -------------------------------------------------------------------- engine


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
        written = known()
        if isinstance(written, str):
            return written
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


def database_file(url: str) -> Path | None:
    """The file of an SQLite database at ``url``; ``None`` for an in-memory one or another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    name = parsed.database
    if name.startswith("file:"):  # an SQLite URI (``?mode=ro&uri=true``)
        name = name[len("file:") :].split("?", 1)[0]
    return Path(name).resolve()


def _reason(exc: DBAPIError, *, password: str | None) -> str:
    """The driver's reason for ``exc`` in one line (its first), ``password`` blotted out should it appear."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc.orig).__name__
    return reason.replace(password, "***") if password else reason


def _driver(conn: Connection) -> Any:
    """The driver's own connection under ``conn``: pragmas outside any transaction SQLAlchemy began."""
    return conn.connection.driver_connection


# --------------------------------------------------------------------- base


class SqlBase:
    """The engine, the clock and the current transaction, which every record kind's SQL shares.

    Also :class:`~controller.backends.store.Transactions`: :meth:`transaction`
    groups the calls made inside it; a call outside any transaction is a
    transaction of its own (reads take no write lock).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        audit_mark: Path | None = None,
    ) -> None:
        self._file = database_file(url)
        self._engine = build_engine(url, busy_timeout_ms=busy_timeout_ms)
        self._clock = clock
        self._tx: ContextVar[Connection | None] = ContextVar(f"flywheel_store_tx_{id(self)}", default=None)
        self._hooks: ContextVar[list[Callable[[], None]] | None] = ContextVar(
            f"flywheel_store_hooks_{id(self)}", default=None
        )
        if audit_mark is None and self._file is not None:
            audit_mark = self._file.with_name(self._file.name + ".audit-mark")
        self._audit_mark = audit_mark
        dialect = self._engine.dialect.name
        self._upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        try:
            migrate(self._engine)
        except BaseException as exc:
            self._engine.dispose()
            if isinstance(exc, DBAPIError):
                self._check_directory()  # SQLite cannot open its log in a directory it cannot write: say so
            if isinstance(exc, OperationalError) and self._file is None and dialect != "sqlite":
                why = _reason(exc, password=self._engine.url.password)
                raise StoreUnreachable(f"cannot reach the state database {self.url}: {why}") from exc
            raise

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    def _now(self) -> datetime:
        return aware(self._clock.now(), "clock.now()")

    @property
    def audit_mark_path(self) -> Path | None:
        return self._audit_mark

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._tx.get() is not None:
            yield  # join the enclosing transaction
            return
        with self._committing() as conn:
            token = self._tx.set(conn)
            try:
                yield
            finally:
                self._tx.reset(token)

    def _after_commit(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once the current transaction has committed (never if it rolls back)."""
        hooks = self._hooks.get()
        if hooks is None:
            hook()
        elif hook not in hooks:
            hooks.append(hook)

    @contextmanager
    def _committing(self) -> Iterator[Connection]:
        """A writing transaction of its own; its :meth:`_after_commit` hooks run after it commits."""
        hooks: list[Callable[[], None]] = []
        token = self._hooks.set(hooks)
        try:
            with self._engine.begin() as conn:
                yield conn
        finally:
            self._hooks.reset(token)
        for hook in hooks:
            hook()

    # ------------------------------------------------------------ integrity

    def _check_directory(self) -> None:
        if self._file is not None and self._file.parent.is_dir():
            directory = self._file.parent
            if not os.access(directory, os.W_OK | os.X_OK):
                raise StateNotWritable(f"the state directory {directory} is not writable; nothing done")

    def check_writable(self) -> None:
        self._check_directory()
        if self._file is not None:
            for path in (self._file, *(self._file.with_name(self._file.name + s) for s in ("-wal", "-shm"))):
                if path.exists() and not os.access(path, os.W_OK):
                    raise StateNotWritable(f"the state database file {path} is not writable; nothing done")
            mark = self._audit_mark
            if mark is not None and mark.exists() and not os.access(mark, os.W_OK):
                raise StateNotWritable(f"the audit mark {mark} is not writable; nothing done")
        # A write the database really accepts (and forgets): read-only files, mounts and URIs all fail here.
        try:
            with self._engine.connect() as conn, conn.begin() as probe:
                conn.exec_driver_sql("CREATE TABLE flywheel_write_probe (x INTEGER)")
                probe.rollback()
        except DBAPIError as exc:
            where = self._file or self.url
            raise StateNotWritable(
                f"the state database {where} cannot be written ({exc.orig}); nothing done"
            ) from exc

    def check_intact(self) -> None:
        if self._engine.dialect.name != "sqlite":
            return  # PostgreSQL guards its own pages
        try:
            with self._engine.connect() as conn:
                rows = _driver(conn).execute("PRAGMA quick_check").fetchall()
        except DBAPIError as exc:
            rows = [(str(exc.orig),)]
        # SQLite may put several problems in one row, one a line, under a "*** in database main ***" header
        problems = [
            line.strip()
            for row in rows
            if row[0] != "ok"
            for line in str(row[0]).splitlines()
            if line.strip() and not line.startswith("***")
        ]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise StateCorrupt(
                f"the state database {self._file or self.url} is damaged: {problems[0]}{more}; "
                "restore it from a backup; nothing done"
            )

    def checkpoint(self) -> None:
        if self._file is None:
            return  # PostgreSQL and in-memory databases keep no log file of their own
        with self._engine.connect() as conn:
            _driver(conn).execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _write(self) -> AbstractContextManager[Connection]:
        """The current transaction's connection, or a transaction of its own that takes the write lock."""
        return self._connection(write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        """The current transaction's connection, or one of its own that takes no write lock."""
        return self._connection(write=False)

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[Connection]:
        conn = self._tx.get()
        if conn is not None:
            yield conn
        elif write:
            with self._committing() as conn:
                yield conn
        else:
            with self._engine.connect() as conn:
                conn.execution_options(**{_READ_ONLY: True})
                yield conn

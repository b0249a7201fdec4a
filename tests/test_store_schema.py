"""Opening the state store: where it lives, how SQLite is set up, and schema migrations.

Pins down that ``open_store`` puts the database in ``./.flywheel/state.db`` by
default, in ``<dir>/state.db`` for a directory and uses a URL as it is; that
every SQLite connection runs in WAL mode with foreign keys on; that migrations
run on a fresh file and re-opening is a no-op; and that a database migrated by
a newer Flywheel is refused with a clear error rather than used.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from controller.backends.store import SchemaTooNew, open_store, state_url
from controller.backends.store.sql import SqlStore, alembic_config, metadata, schema_revision
from controller.clock import SYSTEM_CLOCK

pytestmark = pytest.mark.unit


def test_default_location_is_dot_flywheel_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(None, clock=SYSTEM_CLOCK)
    try:
        assert (tmp_path / ".flywheel" / "state.db").is_file()
    finally:
        store.close()


def test_directory_location_gets_state_db(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "state-dir"
    store = open_store(target, clock=SYSTEM_CLOCK)
    try:
        assert (target / "state.db").is_file()
    finally:
        store.close()
    assert state_url(str(target)) == f"sqlite:///{(target / 'state.db').resolve()}"


def test_url_is_used_as_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'custom.sqlite'}"
    assert state_url(url) == url
    store = open_store(url, clock=SYSTEM_CLOCK)
    try:
        assert (tmp_path / "custom.sqlite").is_file()
    finally:
        store.close()


def test_every_connection_is_wal_with_foreign_keys(tmp_path: Path) -> None:
    store = SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK)
    try:
        first, second = store.engine.raw_connection(), store.engine.raw_connection()  # two pooled connections
        try:
            for conn in (first, second):
                cursor = conn.cursor()
                pragmas = {
                    name: cursor.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
                }
                assert pragmas["journal_mode"] == "wal"
                assert pragmas["foreign_keys"] == 1
                assert pragmas["synchronous"] == 1  # NORMAL
                assert pragmas["busy_timeout"] > 0
        finally:
            first.close()
            second.close()
    finally:
        store.close()


def test_migrations_create_the_schema_and_reopening_is_idempotent(tmp_path: Path) -> None:
    store = SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK)
    store.set_meta("kept", "yes")
    revision = schema_revision(store.engine)
    store.close()
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert revision == tuple(heads) and len(heads) == 1

    again = SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK)
    try:
        assert schema_revision(again.engine) == revision
        assert again.get_meta("kept") == "yes"
        with again.engine.connect() as conn:
            tables = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
        assert {
            "alembic_version",
            "meta",
            "inbox_events",
            "runs",
            "model_versions",
            "rollouts",
            "serving",
            "approvals",
            "audit_log",
            "outbox",
            "reviews",
            "commit_statuses",
            "pull_requests",
            "pull_request_branches",
            "ok_to_test",
            "handled_comments",
            "github_check_runs",
            "github_report_comments",
            "github_reply_comments",
            "github_branch_pulls",
            "github_poll_cursor",
            "slack_messages",
        } <= tables
    finally:
        again.close()


def test_the_tables_the_code_describes_are_the_ones_the_migrations_make(tmp_path: Path) -> None:
    store = SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK)
    try:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        store.close()
    # Indexes are the migrations' business alone: queries need not name them.
    assert [d for d in differences if not (isinstance(d, tuple) and d[0] == "remove_index")] == []


def test_a_newer_schema_than_the_code_knows_is_refused(tmp_path: Path) -> None:
    store = SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()

    with pytest.raises(SchemaTooNew, match=r"9999.*newer than this Flywheel knows"):
        open_store(tmp_path, clock=SYSTEM_CLOCK)


def test_in_memory_store_for_single_threaded_use() -> None:
    store = open_store("sqlite://", clock=SYSTEM_CLOCK)
    try:
        assert store.put_event(source="timer", delivery_id="t1", kind="schedule", payload={})
        assert not store.put_event(source="timer", delivery_id="t1", kind="schedule", payload={})
    finally:
        store.close()

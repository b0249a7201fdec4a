"""Upgrading a store at schema revision 0007 to 0008: approvals may come from the dashboard.

Pins down, on SQLite and on PostgreSQL, that an approval Flywheel 0007 wrote
reads back as it was, that a decision with the channel ``dashboard`` can be
recorded afterwards while an unknown channel is still refused by the
database, that the approvals stay append-only (SQLite rebuilds the table,
so its triggers must come back), and that a downgrade to 0007 keeps every
row but is refused, in one line, once a dashboard decision is on record.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from controller.backends.store import open_store, state_url
from controller.backends.store.sql import alembic_config, build_engine, schema_revision
from controller.backends.store.sql.tables import approvals, model_versions, runs
from controller.clock import FakeClock

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
    assert schema_revision(engine) == (revision,)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store's URL at revision 0007 holding iris v1 and one approval given on the CLI."""
    if request.param == "sqlite":
        found = state_url(tmp_path / "state")
        engine = build_engine(found)
    else:
        found = request.getfixturevalue("pg_url")
        engine = create_engine(found, poolclass=NullPool)
    try:
        migrate(engine, "0007")
        with engine.begin() as conn:
            conn.execute(
                insert(runs).values(
                    id=1, model="iris", ref="main", commit="c" * 40, cache_key="k1", status="succeeded",
                    trigger="merge", steps={}, metrics={}, gates=[], params={}, data_fingerprints={},
                    created_at=T0, environment_hash="e1", artifact_digest="sha256:art",
                )
            )  # fmt: skip
            conn.execute(
                insert(model_versions).values(
                    model="iris", number=1, content_id="sha256:c1", run_id=1, commit="c" * 40,
                    artifact_digest="sha256:art", artifact_uri="/m", environment_hash="e1",
                    data_fingerprints={}, params={}, metrics={}, created_at=T0,
                )
            )  # fmt: skip
            conn.execute(insert(approvals).values(_approval(channel="cli", user="bob")))
    finally:
        engine.dispose()
    return found


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    made = create_engine(url, poolclass=NullPool)
    yield made
    made.dispose()


def _approval(*, channel: str, user: str) -> dict[str, object]:
    return {
        "model": "iris", "version": 1, "environment": "production", "user": user, "decision": "approve",
        "channel": channel, "comment": "", "created_at": T0, "expires_at": None,
    }  # fmt: skip


def test_an_old_approval_reads_back_and_a_dashboard_one_is_recorded(url: str) -> None:
    with open_store(url, clock=FakeClock(T0)) as store:
        store.add_approval(
            model="iris", version=1, environment="production", user="carol", decision="approve",
            channel="dashboard", comment="looks good", expires_at=None,
        )  # fmt: skip
        found = store.approvals_for(model="iris", version=1, environment="production")
    assert [(a.user, a.channel) for a in found] == [("bob", "cli"), ("carol", "dashboard")]


def test_an_unknown_channel_is_still_refused_and_approvals_stay_append_only(url: str, engine: Engine) -> None:
    open_store(url, clock=FakeClock(T0)).close()
    assert schema_revision(engine) == ("0008",)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(approvals).values(_approval(channel="email", user="dave")))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(update(approvals).values(user="mallory"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(delete(approvals))


def test_a_downgrade_keeps_every_row_and_is_refused_once_the_dashboard_decided(
    url: str, engine: Engine
) -> None:
    open_store(url, clock=FakeClock(T0)).close()
    migrate(engine, "0007", down=True)
    with engine.connect() as conn:
        assert conn.execute(select(approvals.c.user, approvals.c.channel)).all() == [("bob", "cli")]
    with pytest.raises(IntegrityError), engine.begin() as conn:  # 0007's constraint is back
        conn.execute(insert(approvals).values(_approval(channel="dashboard", user="carol")))
    migrate(engine, "0008")
    with engine.begin() as conn:
        conn.execute(insert(approvals).values(_approval(channel="dashboard", user="carol")))
    with pytest.raises(RuntimeError, match="approvals made on the dashboard are on record"):
        migrate(engine, "0007", down=True)
    assert schema_revision(engine) == ("0008",)

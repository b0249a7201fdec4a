"""Upgrading a state directory written at schema revision 0005 to 0006: the outbox's attempts on record.

Pins down that opening a store whose outbox Flywheel 0005 filled (messages
sent, due, in backoff, given up on) migrates it and reads every message back
as it was, none of them in doubt (nothing recorded an attempt then); that an
attempt recorded on the upgraded store puts a message in doubt until it is
marked sent; and that a downgrade to 0005 keeps every message.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, text

from controller.backends.store import open_store, state_url
from controller.backends.store.sql import SqlStore, alembic_config, build_engine, schema_revision
from controller.backends.store.sql.tables import outbox
from controller.clock import FakeClock

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
# key -> (destination, attempts, next attempt, sent at, last error), as 0005's outbox held them
ROWS = {
    "github:octo/models:report:7:iris": ("github", 0, None, T0, None),  # sent
    "slack:iris:v1:production:step_reached:0": ("slack", 2, LATER, None, "Slack rate limit (ratelimited)"),
    "slack:iris:v1:production:promoted:-": ("slack", 0, T0, None, None),  # due
    "console:iris:v1:production:promoted:-": ("console", 1, None, None, "gone"),  # given up on
}


def state_at(directory: Path, revision: str) -> Engine:
    engine = build_engine(state_url(directory))
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    assert schema_revision(engine) == (revision,)
    return engine


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    engine = state_at(directory, "0005")
    try:
        with engine.begin() as conn:
            for n, (key, (destination, attempts, next_at, sent, error)) in enumerate(ROWS.items()):
                conn.execute(
                    insert(outbox).values(
                        destination=destination, key=key, ordering_key=key, payload={"n": n},
                        revision=1, attempts=attempts, created_at=T0, updated_at=T0,
                        next_attempt_at=next_at, sent_at=sent, last_error=error,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()
    yield directory


@pytest.fixture
def store(state: Path) -> Iterator[SqlStore]:
    opened = open_store(state, clock=FakeClock(T0))
    yield opened
    opened.close()


def test_every_message_reads_back_as_it_was_and_none_is_in_doubt(store: SqlStore) -> None:
    messages = [store.get_message(n) for n in range(1, len(ROWS) + 1)]
    assert [m.key for m in messages] == list(ROWS)
    for n, (message, row) in enumerate(zip(messages, ROWS.values(), strict=True)):
        destination, attempts, next_at, sent, error = row
        assert (message.destination, message.attempts, message.next_attempt_at, message.sent_at) == (
            destination, attempts, next_at, sent,
        )  # fmt: skip
        assert (message.last_error, message.payload) == (error, {"n": n})
        assert message.attempt_started_at is None and not message.in_doubt
    assert [m.key for m in store.ready_messages(now=T0)] == ["slack:iris:v1:production:promoted:-"]


def test_an_attempt_on_the_upgraded_store_is_in_doubt_until_marked_sent(store: SqlStore) -> None:
    [due] = store.ready_messages(now=T0)
    store.mark_attempt(due.id)
    doubted = store.get_message(due.id)
    assert doubted.in_doubt and doubted.attempt_started_at == T0
    assert [m.in_doubt for m in store.ready_messages(now=T0)] == [True]  # still due, handed over as such
    assert store.mark_sent(due.id, revision=due.revision)
    sent = store.get_message(due.id)
    assert sent.attempt_started_at is None and not sent.in_doubt


def test_a_downgrade_to_0005_keeps_every_message(store: SqlStore, state: Path) -> None:
    store.mark_attempt(3)
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    with store.engine.connect() as conn:
        keys = list(conn.execute(text("SELECT key FROM outbox ORDER BY id")).scalars())
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(outbox)"))}
    assert keys == list(ROWS) and "attempt_started_at" not in columns
    store.close()
    again = open_store(state, clock=FakeClock(T0))
    try:
        assert [again.get_message(n).key for n in range(1, len(ROWS) + 1)] == list(ROWS)
        assert not again.get_message(3).in_doubt
    finally:
        again.close()

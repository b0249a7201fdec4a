"""Upgrading a state directory written at schema revision 0004 to 0005: the outbox's order and pauses.

Pins down that opening a store whose outbox Flywheel 0004 filled (messages
sent, due, in backoff, given up on) migrates it and reads every message back
as it was, each ordered by its own key (so each is due exactly when it was
before), with no destination paused; that ids are still never reused; that
the new ordering and pauses work on the upgraded store; and that a downgrade
to 0004 keeps every message.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, delete, insert, text

from controller.backends.store import open_store, state_url
from controller.backends.store.sql import SqlStore, alembic_config, build_engine, schema_revision
from controller.backends.store.sql.tables import outbox
from controller.clock import FakeClock

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
# key -> (destination, attempts, next attempt, sent at, last error), as 0004's outbox held them
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
    engine = state_at(directory, "0004")
    try:
        with engine.begin() as conn:
            for n, (key, (destination, attempts, next_at, sent, error)) in enumerate(ROWS.items()):
                conn.execute(
                    insert(outbox).values(
                        destination=destination, key=key, payload={"n": n}, revision=1, attempts=attempts,
                        created_at=T0, updated_at=T0, next_attempt_at=next_at, sent_at=sent, last_error=error,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()
    yield directory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(state: Path, clock: FakeClock) -> Iterator[SqlStore]:
    opened = open_store(state, clock=clock)
    yield opened
    opened.close()


def test_every_message_reads_back_ordered_by_its_own_key(store: SqlStore) -> None:
    messages = [store.get_message(n) for n in range(1, len(ROWS) + 1)]
    assert [m.key for m in messages] == list(ROWS)
    for n, (message, (key, row)) in enumerate(zip(messages, ROWS.items(), strict=True)):
        destination, attempts, next_at, sent, error = row
        assert (message.destination, message.attempts, message.next_attempt_at, message.sent_at) == (
            destination, attempts, next_at, sent,
        )  # fmt: skip
        assert (message.ordering_key, message.last_error, message.payload) == (key, error, {"n": n})
    assert store.destination_pauses(now=T0) == []


def test_each_message_is_due_when_it_was_before(store: SqlStore, clock: FakeClock) -> None:
    assert [m.key for m in store.ready_messages(now=T0)] == ["slack:iris:v1:production:promoted:-"]
    assert [m.key for m in store.ready_messages(now=LATER)] == [
        "slack:iris:v1:production:promoted:-",
        "slack:iris:v1:production:step_reached:0",
    ]


def test_ordering_and_pauses_work_on_the_upgraded_store(store: SqlStore, clock: FakeClock) -> None:
    first = store.enqueue(destination="slack", key="new-1", payload={}, ordering_key="thread")
    second = store.enqueue(destination="slack", key="new-2", payload={}, ordering_key="thread")
    assert first.id > len(ROWS) and second.id == first.id + 1
    assert "new-2" not in [m.key for m in store.ready_messages(now=T0)]
    store.pause_destination("slack", until=LATER, reason="Retry-After: 300")
    assert [m.destination for m in store.ready_messages(now=T0)] == []
    assert {m.key for m in store.ready_messages(now=LATER)} >= {"new-1"}


def test_ids_are_never_reused(store: SqlStore) -> None:
    last = store.enqueue(destination="slack", key="last", payload={})
    with store.engine.begin() as conn:
        conn.execute(delete(outbox).where(outbox.c.id == last.id))
    assert store.enqueue(destination="slack", key="after", payload={}).id == last.id + 1


def test_a_downgrade_to_0004_keeps_every_message(store: SqlStore, state: Path) -> None:
    store.pause_destination("slack", until=LATER, reason="Retry-After: 300")
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with store.engine.connect() as conn:
        keys = list(conn.execute(text("SELECT key FROM outbox ORDER BY id")).scalars())
        tables = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    assert keys == list(ROWS) and "outbox_pauses" not in tables
    store.close()
    again = open_store(state, clock=FakeClock(T0))
    try:
        assert [again.get_message(n).ordering_key for n in range(1, len(ROWS) + 1)] == list(ROWS)
    finally:
        again.close()

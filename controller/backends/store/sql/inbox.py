"""The inbox's SQL: deduplicated by ``(source, delivery_id)``, claimed under a lease, pruned when done.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.Inbox`).
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Unpack

from sqlalchemy import (
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningInsert

from controller.backends.store.common import NotFound
from controller.backends.store.inbox import InboxEvent, NewEvent
from controller.backends.store.sql.base import SqlBase, arguments, aware
from controller.backends.store.sql.mapping import keyed, one, records
from controller.backends.store.sql.tables import inbox_events

__all__ = ["InboxSql"]


class InboxSql(SqlBase):
    def put_event(self, **event: Unpack[NewEvent]) -> bool:
        params = arguments("put_event", NewEvent, event, attempts=0)
        received = params.get("received_at")
        params["received_at"] = self._now() if received is None else aware(received, "received_at")
        with self._write() as conn:
            return conn.execute(self._put_event_statement, params).first() is not None

    @functools.cached_property
    def _put_event_statement(self) -> ReturningInsert[tuple[int]]:
        """Built once: the webhook receiver stores deliveries by the thousand.

        Whether a row was stored is whether it returns its id: with PostgreSQL's
        driver the row count of an ``INSERT ... ON CONFLICT`` that returns is -1.
        """
        insert = self._upsert(inbox_events).on_conflict_do_nothing(index_elements=["source", "delivery_id"])
        return insert.returning(inbox_events.c.id)

    def claim_events(self, *, limit: int, worker: str, lease_seconds: float = 300.0) -> list[InboxEvent]:
        now = self._now()
        table = inbox_events
        claimable = and_(
            table.c.completed_at.is_(None),
            or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at <= now),
        )
        with self._write() as conn:
            ids = list(
                conn.execute(
                    select(table.c.id)
                    .where(claimable)
                    .order_by(table.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's write lock does the same
                ).scalars()
            )
            if not ids:
                return []
            conn.execute(
                update(table)
                .where(table.c.id.in_(ids))
                .values(
                    claimed_by=worker,
                    claimed_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=table.c.attempts + 1,
                )
            )
            rows = conn.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.id)).mappings()
            return records(InboxEvent, rows)

    def complete_event(self, event_id: int, *, error: str | None = None) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(inbox_events)
                .where(inbox_events.c.id == event_id)
                .values(completed_at=self._now(), error=error)
            )
            if result.rowcount == 0:
                raise NotFound(f"no inbox event {event_id}")

    def get_event(self, event_id: int) -> InboxEvent:
        query = keyed(inbox_events, id=event_id)
        with self._read() as conn:
            return one(conn, InboxEvent, query, missing=f"no inbox event {event_id}")

    def prune_events(self, *, before: datetime) -> int:
        cutoff = aware(before, "before")
        table = inbox_events
        with self._write() as conn:
            result = conn.execute(
                delete(table).where(table.c.completed_at.is_not(None), table.c.received_at < cutoff)
            )
            return result.rowcount

"""The outbox's SQL: one row per idempotency key, the newest payload winning, due until sent.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.Outbox`). A payload's ``revision`` moves
whenever it is replaced, so that marking an older payload sent leaves the
newer one due. A message is due only when no message of its ordering key
queued before it (a lower id) is still to deliver, and its destination has
no pause in force (table ``outbox_pauses``, one row per destination).
``attempt_started_at`` is committed before a message goes to its sender and
cleared when it is marked sent: set on a message not sent, it is in doubt.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Connection, and_, exists, select, update

from controller.backends.store.common import JSONObject, NotFound
from controller.backends.store.outbox import DestinationPause, OutboxMessage
from controller.backends.store.sql.base import SqlBase, aware
from controller.backends.store.sql.mapping import found, keyed, one, records
from controller.backends.store.sql.tables import outbox, outbox_pauses

__all__ = ["OutboxSql"]


def _get_message(conn: Connection, ident: int | str, *, by: str, for_update: bool = False) -> OutboxMessage:
    column = outbox.c.id if by == "id" else outbox.c.key
    query = select(outbox).where(column == ident)
    if for_update:
        query = query.with_for_update()
    return one(conn, OutboxMessage, query, missing=f"no outbox message with {by} {ident!r}")


class OutboxSql(SqlBase):
    def enqueue(
        self,
        *,
        destination: str,
        key: str,
        payload: JSONObject,
        replace: bool = True,
        ordering_key: str | None = None,
    ) -> OutboxMessage:
        now = self._now()
        with self._write() as conn:
            inserted = conn.execute(
                self._upsert(outbox)
                .values(
                    destination=destination,
                    key=key,
                    ordering_key=key if ordering_key is None else ordering_key,
                    payload=payload,
                    revision=1,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    next_attempt_at=now,
                )
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(outbox.c.id)  # PostgreSQL's driver counts -1 rows here: a returned id says it
            ).scalar()
            if inserted is not None:
                return _get_message(conn, inserted, by="id")
            existing = _get_message(conn, key, by="key", for_update=True)
            if existing.destination != destination:
                raise ValueError(
                    f"outbox key {key!r} belongs to destination {existing.destination!r}, not {destination!r}"
                )
            if not replace or existing.payload == json.loads(json.dumps(payload)):
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
        when = self._now() if now is None else aware(now, "now")
        query = (
            select(outbox)
            .where(outbox.c.sent_at.is_(None), outbox.c.next_attempt_at <= when)
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return records(OutboxMessage, conn.execute(query).mappings())

    def ready_messages(
        self,
        *,
        now: datetime | None = None,
        limit: int = 100,
        destinations: Collection[str] | None = None,
    ) -> list[OutboxMessage]:
        when = self._now() if now is None else aware(now, "now")
        earlier = outbox.alias("earlier")
        queued_before = exists().where(
            earlier.c.ordering_key == outbox.c.ordering_key,
            earlier.c.id < outbox.c.id,
            earlier.c.sent_at.is_(None),
            earlier.c.next_attempt_at.is_not(None),  # given up on: holds nothing back
        )
        paused = exists().where(
            and_(outbox_pauses.c.destination == outbox.c.destination, outbox_pauses.c.until > when)
        )
        query = select(outbox).where(
            outbox.c.sent_at.is_(None), outbox.c.next_attempt_at <= when, ~queued_before, ~paused
        )
        if destinations is not None:
            query = query.where(outbox.c.destination.in_(sorted(destinations)))
        query = query.order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
        with self._read() as conn:
            return records(OutboxMessage, conn.execute(query).mappings())

    def mark_attempt(self, message_id: int) -> None:
        now = self._now()
        with self._write() as conn:
            attempt = update(outbox).where(outbox.c.id == message_id)
            result = conn.execute(attempt.values(attempt_started_at=now, updated_at=now))
            if result.rowcount == 0:
                raise NotFound(f"no outbox message {message_id}")

    def mark_sent(self, message_id: int, *, revision: int | None = None) -> bool:
        query = update(outbox).where(outbox.c.id == message_id)
        if revision is not None:
            query = query.where(outbox.c.revision == revision)
        now = self._now()
        values = {"sent_at": now, "next_attempt_at": None, "updated_at": now, "attempt_started_at": None}
        with self._write() as conn:
            if conn.execute(query.values(**values)).rowcount == 1:
                return True
            _get_message(conn, message_id, by="id")  # raises NotFound when there is no such message
            return False

    def mark_failed(self, message_id: int, *, error: str, retry_at: datetime | None) -> None:
        retry = None if retry_at is None else aware(retry_at, "retry_at")
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

    def pause_destination(self, destination: str, *, until: datetime, reason: str) -> DestinationPause:
        until = aware(until, "until")
        with self._write() as conn:
            current = found(conn, DestinationPause, keyed(outbox_pauses, destination=destination))
            if current is not None and current.until >= until:
                return current
            values = {"until": until, "reason": reason, "updated_at": self._now()}
            conn.execute(
                self._upsert(outbox_pauses)
                .values(destination=destination, **values)
                .on_conflict_do_update(index_elements=["destination"], set_=values)
            )
        return DestinationPause(destination=destination, until=until, reason=reason)

    def destination_pauses(self, *, now: datetime | None = None) -> list[DestinationPause]:
        when = self._now() if now is None else aware(now, "now")
        query = (
            select(outbox_pauses).where(outbox_pauses.c.until > when).order_by(outbox_pauses.c.destination)
        )
        with self._read() as conn:
            return records(DestinationPause, conn.execute(query).mappings())

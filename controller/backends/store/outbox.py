"""The outbox: messages to outside services (GitHub, Slack), kept until sent and retried until then.

The engine and the backends' forges and notifiers enqueue; the controller's
loop (:func:`controller.engine.outbox.deliver_due`) hands due messages to
each destination's sender and records the outcome. One idempotency key per
message: a repeat after a crash replaces the payload (newest wins) and never
duplicates the message (Invariant 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from controller.backends.store.common import JSONObject

__all__ = ["Outbox", "OutboxMessage"]


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


class Outbox(Protocol):
    """Durable messages, one per idempotency key, due until sent or given up."""

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

"""The outbox: messages to outside services (GitHub, Slack), kept until sent and retried until then.

The engine and the backends' forges and notifiers enqueue; the controller's
loop (:func:`controller.engine.outbox.deliver_due`) hands due messages to
each destination's sender and records the outcome. One idempotency key per
message: a repeat after a crash replaces the payload (newest wins) and never
duplicates the message (Invariant 5).

Two rules keep delivery in step with what the services ask and what people
read:

* **Order.** Every message has an ordering key: a rollout's Slack thread,
  or by default its own key (a pull request's report or a check run is one
  message whose newest payload replaces the older one).
  Of the messages not yet delivered under one ordering key, only the one
  queued first is ever due: a later one never goes before it, and one
  waiting in backoff holds back only the messages behind it on its key. A
  message given up on holds back nothing.
* **Doubt.** An attempt is recorded (:meth:`Outbox.mark_attempt`) before
  the message is handed to its sender, and the record is cleared when the
  message is marked sent. A message with an attempt on record that is not
  sent is *in doubt* (:attr:`OutboxMessage.in_doubt`): the controller was
  stopped between sending it and recording it sent, or its last attempt
  failed half-way, so it may have reached its destination. Its sender looks
  there for it by its key before sending it again.
* **Pauses.** A destination the service told to wait (``Retry-After``, a
  rate limit's reset) is paused until then (:class:`DestinationPause`),
  stored, so that a restarted controller waits too: none of its messages is
  due before the pause ends. Other destinations keep flowing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from controller.backends.store.common import JSONObject

__all__ = ["DestinationPause", "Outbox", "OutboxMessage"]


@dataclass(frozen=True)
class OutboxMessage:
    """A message to deliver to an outside service, retried until it is sent.

    ``revision`` moves whenever the payload is replaced, so that marking an
    older payload as sent does not swallow a newer one. ``ordering_key``
    names the messages it is delivered in order with (see the module
    docstring); its place among them is when it was first queued.
    ``attempt_started_at`` is when an attempt to send it began that was not
    followed by its being marked sent (see :attr:`in_doubt`).
    """

    id: int
    destination: str  # github | slack | ...
    key: str  # idempotency key, unique
    ordering_key: str  # the messages delivered in the order they were queued; the key itself by default
    payload: JSONObject
    revision: int
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None  # None once sent or given up
    sent_at: datetime | None = None
    last_error: str | None = None
    attempt_started_at: datetime | None = None

    @property
    def in_doubt(self) -> bool:
        """An attempt was begun and the message was never marked sent: it may have reached its destination."""
        return self.attempt_started_at is not None and self.sent_at is None


@dataclass(frozen=True)
class DestinationPause:
    """Nothing is sent to ``destination`` before ``until``: its service said so (``reason``)."""

    destination: str
    until: datetime
    reason: str


class Outbox(Protocol):
    """Durable messages, one per idempotency key, due until sent or given up, in order per ordering key."""

    def enqueue(
        self,
        *,
        destination: str,
        key: str,
        payload: JSONObject,
        replace: bool = True,
        ordering_key: str | None = None,
    ) -> OutboxMessage:
        """Queue a message; for a known ``key`` replace its payload (newest wins) and never duplicate it.

        A message already sent with the very same payload is left alone; with a
        different payload it is due again. With ``replace=False`` a known key is
        left exactly as it is (a one-off event, such as a notification repeated
        after a crash, is announced once). ``ordering_key`` (``key`` when not
        given) is set when the message is first queued and kept after that.
        """
        ...

    def due_messages(self, *, now: datetime | None = None, limit: int = 100) -> list[OutboxMessage]:
        """Every message still to send whose time has come, oldest due first, whatever its order or its
        destination's pause: what is waiting. What may be sent now is :meth:`ready_messages`."""
        ...

    def ready_messages(
        self,
        *,
        now: datetime | None = None,
        limit: int = 100,
        destinations: Collection[str] | None = None,
    ) -> list[OutboxMessage]:
        """The messages that may be sent at ``now``, oldest due first: each the first undelivered one of
        its ordering key, its time come, its destination not paused; only for ``destinations`` when
        they are given."""
        ...

    def mark_attempt(self, message_id: int) -> None:
        """Record, before the message is handed to its sender, that an attempt to send it begins.

        The record stays until the message is marked sent: a message with one
        and not sent is in doubt (:attr:`OutboxMessage.in_doubt`).
        """
        ...

    def mark_sent(self, message_id: int, *, revision: int | None = None) -> bool:
        """Mark sent and clear the attempt on record; ``False`` (still due) when ``revision`` is given
        and the payload was replaced since."""
        ...

    def mark_failed(self, message_id: int, *, error: str, retry_at: datetime | None) -> None:
        """Count a failed attempt; retry at ``retry_at``, or never when it is ``None``."""
        ...

    def get_message(self, message_id: int) -> OutboxMessage: ...

    def pause_destination(self, destination: str, *, until: datetime, reason: str) -> DestinationPause:
        """Send nothing to ``destination`` before ``until``; a pause already longer is kept as it is."""
        ...

    def destination_pauses(self, *, now: datetime | None = None) -> list[DestinationPause]:
        """The pauses still in force at ``now``, by destination."""
        ...

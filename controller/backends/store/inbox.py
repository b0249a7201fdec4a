"""The inbox: events from webhooks, the poller, timers and Slack, deduplicated and leased to one worker.

The webhook receiver and the poller put events; the controller's loop claims,
handles and completes them (Invariant 5: an event is kept until it is
handled, and a crashed worker's claim runs out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypedDict, Unpack

from controller.backends.store.common import JSONObject

__all__ = ["Inbox", "InboxEvent", "NewEvent"]


@dataclass(frozen=True)
class InboxEvent:
    """One event from a webhook, the poller, a timer or Slack, waiting to be reconciled.

    ``(source, delivery_id)`` is unique: a redelivery is dropped at the door.
    """

    id: int
    source: str  # github | poll | timer | slack | cli
    delivery_id: str
    kind: str  # e.g. "push", "pull_request", "schedule", "block_actions"
    payload: JSONObject
    received_at: datetime
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None  # after this, another worker may claim it again
    attempts: int = 0
    completed_at: datetime | None = None
    error: str | None = None


class _NewEventKeys(TypedDict):
    source: str
    delivery_id: str
    kind: str
    payload: JSONObject


class NewEvent(_NewEventKeys, total=False):
    """What :meth:`Inbox.put_event` takes; ``received_at`` left out is now."""

    received_at: datetime | None


class Inbox(Protocol):
    """Durable, deduplicated events waiting to be handled."""

    def put_event(self, **event: Unpack[NewEvent]) -> bool:
        """Store an event; ``False`` (and nothing stored) when ``(source, delivery_id)`` was seen before."""
        ...

    def claim_events(self, *, limit: int, worker: str, lease_seconds: float = 300.0) -> list[InboxEvent]:
        """Claim up to ``limit`` unfinished events, oldest first, including ones whose claim expired."""
        ...

    def complete_event(self, event_id: int, *, error: str | None = None) -> None: ...

    def get_event(self, event_id: int) -> InboxEvent: ...

    def prune_events(self, *, before: datetime) -> int:
        """Forget completed events received before ``before`` (their delivery ids stop deduplicating)."""
        ...

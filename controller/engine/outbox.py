"""Delivering the outbox: messages to GitHub, Slack and the console, retried until they are sent.

The engine never calls an outside service inline. It queues a message with
:meth:`Outbox.enqueue` (one idempotency key per message, so a repeat after a
crash does not duplicate it) and the controller's loop calls
:func:`deliver_due` now and then, which hands each due message to the
:class:`Sender` registered for its destination.

A sender raises :class:`DeliveryError` when a message could not be
delivered: with ``retry_after`` when the service said when to come back
(``Retry-After``, ``X-RateLimit-Reset``, Slack's 429), with ``permanent``
when retrying cannot help (the message is kept, marked given up, and
logged). A message is tried again after the :data:`BACKOFF` of its failures
so far (2 s doubling to 5 min, ±25%), never sooner than the service asked;
any other exception is retried the same way. A rate-limited or failing
destination is not tried again in the same pass, so an outage of one service
delays its own messages only, and loses none (Invariant 5).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.backends.delivery import Backoff, DeliveryError, Sender
from controller.backends.store import Outbox

__all__ = ["BACKOFF", "DeliveryError", "DeliveryStats", "Sender", "deliver_due"]

log = logging.getLogger("flywheel.outbox")

BACKOFF = Backoff(first=2.0, most=300.0, jitter=0.25)  # between a message's attempts


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    gave_up: int = 0
    deferred: set[str] = field(default_factory=set)  # destinations skipped for the rest of the pass


def deliver_due(
    store: Outbox,
    senders: Mapping[str, Sender],
    *,
    now: datetime,
    limit: int = 100,
) -> DeliveryStats:
    """Send every due message whose destination has a sender; record each outcome in the store.

    Messages for destinations without a sender here are left for another
    process (the webhook service and the controller may share a store).
    """
    stats = DeliveryStats()
    when = now
    for message in store.due_messages(now=when, limit=limit):
        sender = senders.get(message.destination)
        if sender is None or message.destination in stats.deferred:
            continue
        try:
            sender.send(message)
        except DeliveryError as exc:
            stats.deferred.add(message.destination)
            if exc.permanent:
                stats.gave_up += 1
                log.error("giving up on %s message %s: %s", message.destination, message.key, exc)
                store.mark_failed(message.id, error=str(exc), retry_at=None)
                continue
            stats.failed += 1
            delay = BACKOFF.seconds(message.attempts + 1, retry_after=exc.retry_after)
            log.warning(
                "%s message %s not delivered, retrying in %.0fs: %s",
                message.destination,
                message.key,
                delay,
                exc,
            )
            store.mark_failed(message.id, error=str(exc), retry_at=when + timedelta(seconds=delay))
        except Exception as exc:
            stats.deferred.add(message.destination)
            stats.failed += 1
            delay = BACKOFF.seconds(message.attempts + 1)
            log.exception("%s message %s failed, retrying in %.0fs", message.destination, message.key, delay)
            store.mark_failed(
                message.id, error=f"{type(exc).__name__}: {exc}", retry_at=when + timedelta(seconds=delay)
            )
        else:
            if store.mark_sent(message.id, revision=message.revision):
                stats.sent += 1
    return stats

"""Delivering the outbox: messages to GitHub, Slack and the console, retried until they are sent.

The engine never calls an outside service inline. It queues a message with
:meth:`Outbox.enqueue` (one idempotency key per message, so a repeat after a
crash does not duplicate it; an ordering key, so the messages of one Slack
thread are delivered in the order they were queued, and a report's or a check
run's newest payload is never overtaken by an older one) and the
controller's loop calls :func:`deliver_due` now and then, which hands each
due message to the :class:`Sender` registered for its destination.

A sender raises :class:`DeliveryError` when a message could not be
delivered: with ``retry_after`` when the service said when to come back
(``Retry-After``, ``X-RateLimit-Reset``, Slack's 429), with ``permanent``
when retrying cannot help (the message is kept, marked given up, and
logged). A ``retry_after`` pauses the whole destination in the store until
then (:meth:`Outbox.pause_destination`): nothing is sent to it before, by
this pass, the next, or a restarted controller. A destination is what one
sender with one credential talks to: ``slack`` is one workspace's bot token,
``github`` one API host's token or App installation (GitHub's rate limits
belong to the credential, across all its repositories). A message is tried
again after the :data:`BACKOFF` of its failures so far (2 s doubling to
5 min, ±25%), never sooner than the service asked; any other exception is
retried the same way. A failing destination is not tried again in the same
pass, so an outage of one service delays its own messages only, and loses
none (Invariant 5); a message waiting in backoff holds back only the messages
behind it on its ordering key.

Each attempt is recorded before it is made (:meth:`Outbox.mark_attempt`,
committed before :meth:`Sender.send`), and the record is cleared when the
message is marked sent. A controller killed between a sender's call to its
service and the store's ``mark_sent`` therefore finds the message *in doubt*
after a restart (:attr:`OutboxMessage.in_doubt`; so is one whose last attempt
failed, which may have got half-way), and its sender first looks at the
destination for the message's key: a message already there is adopted, not
sent again. That is how a notification or a comment is sent once although
neither Slack, GitHub nor a terminal takes part in the store's transactions.

Senders make one attempt per call: the clients' own retries are off (slack-sdk's
``retry_handlers=[]``, PyGithub's ``retry=None``), so no hidden retry sleeps
the controller's loop; the outbox decides when to try again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.backends.delivery import Backoff, DeliveryError, Sender
from controller.backends.store import Outbox, OutboxMessage

__all__ = ["BACKOFF", "DeliveryError", "DeliveryStats", "Sender", "deliver_due"]

log = logging.getLogger("flywheel.outbox")

BACKOFF = Backoff(first=2.0, most=300.0, jitter=0.25)  # between a message's attempts


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    gave_up: int = 0
    deferred: set[str] = field(default_factory=set)  # destinations skipped for the rest of the pass
    paused: set[str] = field(default_factory=set)  # destinations the service told to wait


def deliver_due(
    store: Outbox,
    senders: Mapping[str, Sender],
    *,
    now: datetime,
    limit: int = 100,
) -> DeliveryStats:
    """Send every due message whose destination has a sender; record each outcome in the store.

    Messages for destinations without a sender here are left for another
    process (the webhook service and the controller may share a store). A
    message delivered lets the next one of its ordering key go in the same
    pass; at most ``limit`` attempts are made.
    """
    stats = DeliveryStats()
    for _ in range(limit):
        wanted = set(senders) - stats.deferred
        # One at a time, oldest due first: the next of a thread becomes due once the one before it is sent.
        due = store.ready_messages(now=now, limit=1, destinations=wanted) if wanted else []
        if not due:
            break
        _deliver(store, senders[due[0].destination], due[0], now=now, stats=stats)
    return stats


def _deliver(
    store: Outbox, sender: Sender, message: OutboxMessage, *, now: datetime, stats: DeliveryStats
) -> None:
    """Try ``message`` once and record the outcome in the store and in ``stats``."""
    destination = message.destination
    store.mark_attempt(message.id)  # committed first: a crash from here on leaves the message in doubt
    try:
        sender.send(message)
    except DeliveryError as exc:
        stats.deferred.add(destination)
        if exc.permanent:
            stats.gave_up += 1
            log.error("giving up on %s message %s: %s", destination, message.key, exc)
            store.mark_failed(message.id, error=str(exc), retry_at=None)
            return
        stats.failed += 1
        if exc.retry_after is not None:
            until = now + timedelta(seconds=max(exc.retry_after, 0.0))
            store.pause_destination(destination, until=until, reason=str(exc))
            stats.paused.add(destination)
            log.warning("%s asked to wait: nothing is sent to it before %s (%s)", destination, until, exc)
        delay = BACKOFF.seconds(message.attempts + 1, retry_after=exc.retry_after)
        log.warning(
            "%s message %s not delivered, retrying in %.0fs: %s", destination, message.key, delay, exc
        )
        store.mark_failed(message.id, error=str(exc), retry_at=now + timedelta(seconds=delay))
    except Exception as exc:
        stats.deferred.add(destination)
        stats.failed += 1
        delay = BACKOFF.seconds(message.attempts + 1)
        log.exception("%s message %s failed, retrying in %.0fs", destination, message.key, delay)
        store.mark_failed(
            message.id, error=f"{type(exc).__name__}: {exc}", retry_at=now + timedelta(seconds=delay)
        )
    else:
        if store.mark_sent(message.id, revision=message.revision):
            stats.sent += 1

"""The contract between the outbox and the backends that deliver its messages, and the backoff both use.

A backend that talks to an outside service (GitHub, Slack, a notifier)
implements :class:`Sender`; :func:`controller.engine.outbox.deliver_due`
hands it each due message. It raises :class:`DeliveryError` when a message
was not delivered: with ``retry_after`` when the service said when to come
back (the outbox then pauses everything bound for that destination until
then), with ``permanent`` when retrying cannot help. A sender makes one
attempt per call: its client library's own retries are off. A message
:attr:`~controller.backends.store.OutboxMessage.in_doubt` may have been
delivered by an attempt the controller did not live to record: the sender
checks its destination for it before sending it again.

:func:`rollout_thread` is the ordering key of a model version's rollout
messages (the events :mod:`controller.engine.notices` queues, the decisions
:mod:`controller.engine.slack_actions` queues): one Slack thread, read in
the order the events happened.

:class:`Backoff` is the one retry policy for calls to outside services: the
outbox spaces a message's attempts with it and the GitHub poller
(:mod:`controller.backends.forge.github_poll`) its polls after a failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.backends.store import OutboxMessage

__all__ = ["Backoff", "DeliveryError", "Sender", "rollout_thread"]

_MAX_DOUBLINGS = 64  # far past any cap: keeps 2 ** n a float for a message that failed for days


def rollout_thread(destination: str, *, model: str, version: int) -> str:
    """The ordering key of ``model`` ``version``'s rollout messages to ``destination`` (one Slack thread)."""
    return f"{destination}:thread:{model}:v{version}"


class DeliveryError(Exception):
    """A message was not delivered; ``retry_after`` (seconds) when the service said to send nothing more
    to it before then (a rate limit, an outage with ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Sender(Protocol):
    def send(self, message: OutboxMessage) -> None:
        """Deliver ``message``; raise when it was not delivered.

        When ``message.in_doubt`` an earlier attempt may have delivered it (the
        controller was killed before it was recorded sent): look at the
        destination for ``message.key`` first, and adopt what is there instead
        of sending it twice.
        """
        ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first`` seconds after one failure, doubling with each failure in a row up
    to ``most``; each wait spread by ``±jitter`` (a fraction: 0.25 is ±25%), so that many waiting
    callers do not come back at the same moment."""

    first: float
    most: float
    jitter: float = 0.0

    def seconds(
        self,
        failures: int,
        *,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """How long to wait after ``failures`` failures in a row (the one just seen included).

        ``retry_after`` is what the service asked for (``Retry-After``, a rate
        limit's reset): the wait is never shorter than that, nor than the
        backoff. ``rand`` gives the jitter, uniform in [0, 1).
        """
        doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
        wait = min(self.first * 2.0**doublings, self.most)
        if self.jitter:
            wait *= 1.0 - self.jitter + 2.0 * self.jitter * rand()
        return max(wait, retry_after or 0.0)

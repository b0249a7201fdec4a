"""The contract between the outbox and the backends that deliver its messages.

A backend that talks to an outside service (GitHub, Slack, a notifier)
implements :class:`Sender`; :func:`controller.engine.outbox.deliver_due`
hands it each due message. It raises :class:`DeliveryError` when a message
was not delivered: with ``retry_after`` when the service said when to come
back, with ``permanent`` when retrying cannot help.
"""

from __future__ import annotations

from typing import Protocol

from controller.backends.store import OutboxMessage

__all__ = ["DeliveryError", "Sender"]


class DeliveryError(Exception):
    """A message was not delivered; ``retry_after`` (seconds) when the service said when to retry."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Sender(Protocol):
    def send(self, message: OutboxMessage) -> None:
        """Deliver ``message`` (idempotently: it may be sent again after a crash); raise when it was not."""
        ...

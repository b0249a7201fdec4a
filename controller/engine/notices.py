"""Queueing rollout notifications, and delivering them through a notifier.

The rollout engine calls :func:`queue_event` for each thing people should
hear about. Each event goes into the outbox once per channel of the model's
``notifications`` (the console always), keyed by the event's idempotency key,
so an event the engine repeats after a crash is still announced once
(Invariant 5), and ordered with the other events of its model version, so
they are read in the order they happened. :class:`NotifierSender` is the outbox sender that hands an
event to a :class:`~controller.backends.notify.Notifier` (the console one on
the embedded home; Slack registers its own sender).
"""

from __future__ import annotations

from collections.abc import Callable

from controller.backends.delivery import rollout_thread
from controller.backends.notify import Notifier, RolloutEvent, event_from_json, event_to_json
from controller.backends.store import Outbox, OutboxMessage
from controller.specs.types import Model

__all__ = ["NotifierSender", "destinations", "queue_event"]


def destinations(model: Model | None) -> dict[str, str]:
    """Outbox destination → target (e.g. the Slack channel) for ``model``'s notifications; console always."""
    found = {"console": ""}
    for notification in model.notifications if model is not None else ():
        found.setdefault(notification.channel, notification.target)
    return found


def queue_event(store: Outbox, model: Model | None, event: RolloutEvent) -> None:
    """Queue ``event`` for every channel of ``model``; an event already queued is left as it was."""
    payload = event_to_json(event)
    for destination, target in destinations(model).items():
        store.enqueue(
            destination=destination,
            key=f"{destination}:{event.key}",
            payload={"event": payload, "target": target},
            replace=False,
            ordering_key=rollout_thread(destination, model=event.model, version=event.version),
        )


class NotifierSender:
    """Outbox sender for one notifier: posts the event stored in each message.

    ``announced`` tells whether the notifier already delivered an event (the
    console's journal, :meth:`ConsoleNotifier.announced
    <controller.backends.notify.console.ConsoleNotifier.announced>`); it is
    asked about a message in doubt only, and an event it knows is not posted
    again. Without it a message in doubt is posted again: at least once.
    """

    def __init__(
        self, notifier: Notifier, *, announced: Callable[[RolloutEvent], bool] | None = None
    ) -> None:
        self.notifier = notifier
        self.announced = announced

    def send(self, message: OutboxMessage) -> None:
        event = event_from_json(message.payload["event"])
        if message.in_doubt and self.announced is not None and self.announced(event):
            return  # delivered by an attempt the controller did not live to record
        self.notifier.post(event)

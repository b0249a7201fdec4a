"""A notifier for tests and the demo: keeps every event it is given, in order."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.backends.notify import EventKind, RolloutEvent


@dataclass
class FakeNotifier:
    """Collects posted events in :attr:`events`; with ``fail_with`` set, raises it instead."""

    events: list[RolloutEvent] = field(default_factory=list)
    fail_with: Exception | None = None

    def post(self, event: RolloutEvent) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [event.kind for event in self.events]

    def keys(self) -> list[str]:
        return [event.key for event in self.events]

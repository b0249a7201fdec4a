"""Notifiers: telling people what a rollout is doing.

One narrow interface, like Flux's ``Post(ctx, event) error``: a
:class:`Notifier` has one method, :meth:`Notifier.post`, which delivers one
:class:`RolloutEvent` or raises. The rollout engine builds the events; the
outbox delivers them and uses :attr:`RolloutEvent.key` so that an event is
not announced twice after a crash (Invariant 5).

Implementations: :mod:`.console` (the embedded home: one log line per event),
Slack on the cluster home, and :mod:`.fake` (collects events for tests).
:class:`FanoutNotifier` posts to several at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

__all__ = [
    "LOGGER_NAME",
    "EventKind",
    "FanoutNotifier",
    "Notifier",
    "RolloutEvent",
    "event_from_json",
    "event_to_json",
]

LOGGER_NAME = "flywheel.notify"

EventKind = Literal[
    "rollout_started",
    "step_reached",
    "analysis_inconclusive",
    "analysis_failed",
    "awaiting_approval",
    "approved",
    "promoted",
    "rolled_back",
    "rejected",
    "paused",
    "resumed",
    "aborted",
    "serving_discrepancy",  # what serves differs from what the store says (controller.engine.observed)
]


@dataclass(frozen=True)
class RolloutEvent:
    """Something people should hear about one model version in one environment.

    ``message`` is a sentence for people. ``detail`` carries the figures behind
    it (weight, metrics, who may approve, who approved, ...); values should be
    JSON-serialisable, since the outbox stores events. ``step`` is the canary
    step the rollout is at, when there is one. ``occurrence`` tells apart
    events of one kind that recur at the same step on purpose (a second pause,
    a later inconclusive round); the caller numbers them, 0 for the first.
    ``at`` is a timezone-aware UTC time.
    """

    kind: EventKind
    model: str
    version: int
    environment: str
    message: str
    at: datetime
    detail: Mapping[str, object] = field(default_factory=dict)
    step: int | None = None
    occurrence: int = 0

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"RolloutEvent.at must be timezone-aware, got {self.at!r}")

    @property
    def key(self) -> str:
        """The idempotency key: the same event posted again after a crash has the same key.

        Built from what identifies the event (model, version, environment,
        kind, step, occurrence), never from its time, wording or detail.
        """
        step = "-" if self.step is None else str(self.step)
        key = f"{self.model}:v{self.version}:{self.environment}:{self.kind}:{step}"
        return f"{key}:{self.occurrence}" if self.occurrence else key


class Notifier(Protocol):
    def post(self, event: RolloutEvent) -> None:
        """Deliver ``event``; raise when it could not be delivered (the outbox retries)."""
        ...


class FanoutNotifier:
    """Posts each event to every notifier; one failing does not stop the others.

    A failure is logged (with its traceback) on the ``flywheel.notify``
    logger and swallowed; the fan-out itself never raises.
    """

    def __init__(self, notifiers: Iterable[Notifier], *, logger: logging.Logger | None = None) -> None:
        self.notifiers: tuple[Notifier, ...] = tuple(notifiers)
        self._logger = logger or logging.getLogger(LOGGER_NAME)

    def post(self, event: RolloutEvent) -> None:
        for notifier in self.notifiers:
            try:
                notifier.post(event)
            except Exception:
                self._logger.exception("notifier %s failed to post %s", type(notifier).__name__, event.key)


def event_to_json(event: RolloutEvent) -> dict[str, object]:
    """``event`` as JSON for the outbox; :func:`event_from_json` reads it back."""
    return {
        "kind": event.kind,
        "model": event.model,
        "version": event.version,
        "environment": event.environment,
        "message": event.message,
        "at": event.at.isoformat(),
        "detail": dict(event.detail),
        "step": event.step,
        "occurrence": event.occurrence,
    }


def event_from_json(data: Mapping[str, object]) -> RolloutEvent:
    step = data.get("step")
    detail = data.get("detail")
    return RolloutEvent(
        kind=str(data["kind"]),  # type: ignore[arg-type]
        model=str(data["model"]),
        version=int(str(data["version"])),
        environment=str(data["environment"]),
        message=str(data["message"]),
        at=datetime.fromisoformat(str(data["at"])),
        detail=dict(detail) if isinstance(detail, Mapping) else {},
        step=None if step is None else int(str(step)),
        occurrence=int(str(data.get("occurrence", 0))),
    )

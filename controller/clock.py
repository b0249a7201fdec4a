"""The one clock: every wall-clock reading in Flywheel goes through a :class:`Clock`.

The composition root (:mod:`controller.app`, the CLI) makes one
:class:`SystemClock` and hands it to everything that stamps or compares times
— the store, the engines, the backends — so that a test's :class:`FakeClock`
moves them all together, and nothing disagrees about "now" (a store stamping
the real date under an engine on a fake one is how an outbox message never
became due). No other module reads the wall clock on its own; a test walks
the source and fails on ``datetime.now()``, ``time.time()`` and friends
outside this module.

Elapsed time (timeouts, durations of a step) is measured with
:meth:`Clock.monotonic`, which a jump of the wall clock does not move.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Where "now" comes from."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def timestamp(self) -> float:
        """The current time as seconds since the epoch (what HTTP headers and JWTs speak)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for timeouts and durations."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def timestamp(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The clock entry points hand down; only they should name it."""


class FakeClock:
    """A clock that moves only when told to (tests and simulations); thread-safe.

    Its monotonic reading moves with it, so timeouts measured on it expire
    when the test advances time, not when the machine's clock does.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._monotonic = 1_000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def timestamp(self) -> float:
        return self.now().timestamp()

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (plus any ``timedelta`` keywords: ``minutes=5``); the new now."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._now += step
            self._monotonic += step.total_seconds()
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (forward only)."""
        self.advance((when.astimezone(UTC) - self.now()).total_seconds())

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"

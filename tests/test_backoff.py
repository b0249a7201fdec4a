"""The one backoff policy for calls to outside services, and the outbox's use of it.

Pins down: :class:`~controller.backends.delivery.Backoff` waits ``first``
seconds after one failure and doubles with each failure in a row up to
``most``, even after thousands of failures; its jitter spreads each wait
evenly within ±the fraction and no further; a service's ``retry_after`` is a
floor, never shortened by the backoff nor shortening it. The outbox spaces a
failing message's attempts by it (2 s doubling to 5 min, ±25%), for a
:class:`DeliveryError` and any other exception alike, and waits at least what
the service asked. (The GitHub poller's use, 120 → 240 → 480 s and the rate
limits, is pinned in test_github_poll.py.)
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from controller.backends.delivery import Backoff, DeliveryError
from controller.backends.store import OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.engine.outbox import deliver_due

pytestmark = pytest.mark.unit
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_doubles_from_the_first_wait_up_to_the_most() -> None:
    policy = Backoff(first=2.0, most=300.0)
    assert [policy.seconds(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert policy.seconds(0) == 2.0  # no failure counted yet: the first wait


def test_thousands_of_failures_in_a_row_wait_the_most() -> None:
    assert Backoff(first=2.0, most=300.0).seconds(5000) == 300.0
    assert Backoff(first=2.0, most=300.0, jitter=0.25).seconds(5000, rand=lambda: 0.5) == 300.0


def test_jitter_spreads_each_wait_within_its_fraction() -> None:
    policy = Backoff(first=8.0, most=300.0, jitter=0.25)
    assert policy.seconds(1, rand=lambda: 0.0) == 6.0
    assert policy.seconds(1, rand=lambda: 0.5) == 8.0
    assert policy.seconds(4, rand=lambda: 0.0) == 48.0  # 64 s less a quarter
    rng = random.Random(5)
    waits = [policy.seconds(1, rand=rng.random) for _ in range(2000)]
    assert 6.0 <= min(waits) < 6.1 and 9.9 < max(waits) < 10.0
    assert sum(w < 8.0 for w in waits) in range(900, 1100)  # even on both sides
    assert all(6.0 <= policy.seconds(1) < 10.0 for _ in range(200))  # the default random source


def test_retry_after_is_a_floor() -> None:
    policy = Backoff(first=120.0, most=900.0)
    assert policy.seconds(1, retry_after=300.0) == 300.0  # the service asked for longer
    assert policy.seconds(3, retry_after=30.0) == 480.0  # failing again and again: the backoff stands
    assert policy.seconds(1, retry_after=-5.0) == 120.0  # a reset already past
    assert policy.seconds(1, retry_after=None) == 120.0


# ------------------------------------------------------------------ the outbox


class Failing:
    """A sender that fails every message, as told."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def send(self, message: OutboxMessage) -> None:
        raise self.error


class Outbox:
    """Delivers the one queued message each time it is due, keeping the time it got to."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.now = NOW
        store.enqueue(destination="github", key="k", payload={"body": "x"})

    def waits(self, sender: Failing, passes: int) -> list[float]:
        """The wait set after each of ``passes`` failed deliveries."""
        seen: list[float] = []
        for _ in range(passes):
            (message,) = self.store.due_messages(now=self.now)
            assert deliver_due(self.store, {"github": sender}, now=self.now).failed == 1
            retry_at = self.store.get_message(message.id).next_attempt_at
            assert retry_at is not None
            seen.append((retry_at - self.now).total_seconds())
            self.now = retry_at
        return seen


@pytest.mark.parametrize("error", [DeliveryError("GitHub answered 502"), RuntimeError("a bug")])
def test_the_outbox_backs_off_2_s_doubling_to_5_min(store: SqlStore, error: Exception) -> None:
    seen = Outbox(store).waits(Failing(error), 11)
    for n, wait in enumerate(seen, start=1):
        expected = min(2.0 * 2 ** (n - 1), 300.0)
        assert 0.75 * expected - 0.001 <= wait <= 1.25 * expected + 0.001, (n, seen)


def test_the_outbox_waits_at_least_what_the_service_asked(store: SqlStore) -> None:
    outbox = Outbox(store)
    assert outbox.waits(Failing(DeliveryError("rate limited", retry_after=120.0)), 1) == [120.0]
    seen = outbox.waits(Failing(DeliveryError("GitHub answered 502")), 7)  # 8 failures in a row now
    assert seen[-1] >= 0.75 * 256
    late = outbox.waits(Failing(DeliveryError("rate limited", retry_after=5.0)), 1)
    assert late[0] >= 0.75 * 300  # the ninth failure: the backoff, though the service said 5 s

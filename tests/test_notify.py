"""Notifiers: the console line and its level, fan-out isolation, and a stable idempotency key.

Pins down: the console notifier writes one readable line per event on the
``flywheel.notify`` logger (WARNING for failures and stops, INFO otherwise);
a failing notifier in a fan-out is logged and does not stop the others; the
idempotency key depends only on what identifies the event, never on its time,
wording or detail; naive times are refused.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller.backends.notify import LOGGER_NAME, EventKind, FanoutNotifier, RolloutEvent
from controller.backends.notify.console import ConsoleNotifier, format_event
from controller.backends.notify.fake import FakeNotifier

pytestmark = pytest.mark.unit
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _event(kind: EventKind = "step_reached", **changes: object) -> RolloutEvent:
    event = RolloutEvent(
        kind=kind,
        model="iris",
        version=3,
        environment="production",
        message="Canary at 20% of traffic.",
        at=NOW,
        detail={"weight": 20},
        step=1,
    )
    return replace(event, **changes)  # type: ignore[arg-type]


def test_console_writes_one_readable_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    ConsoleNotifier().post(_event(detail={"weight": 20, "approvers": ("carol", "dave"), "success": 0.99712}))
    [record] = caplog.records
    assert record.name == LOGGER_NAME
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "iris v3 in production: step_reached — Canary at 20% of traffic. "
        "(weight=20, approvers=carol,dave, success=0.9971)"
    )
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize(
    ("kind", "level"),
    [
        ("analysis_failed", logging.WARNING),
        ("rolled_back", logging.WARNING),
        ("rejected", logging.WARNING),
        ("aborted", logging.WARNING),
        ("rollout_started", logging.INFO),
        ("awaiting_approval", logging.INFO),
        ("analysis_inconclusive", logging.INFO),
        ("promoted", logging.INFO),
    ],
)
def test_console_levels(caplog: pytest.LogCaptureFixture, kind: EventKind, level: int) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    ConsoleNotifier().post(_event(kind, detail={}))
    [record] = caplog.records
    assert record.levelno == level
    assert record.getMessage().startswith(f"iris v3 in production: {kind} — ")


def test_format_without_detail_has_no_parentheses() -> None:
    assert (
        format_event(_event(detail={})) == "iris v3 in production: step_reached — Canary at 20% of traffic."
    )


class _Broken:
    def post(self, event: RolloutEvent) -> None:
        raise RuntimeError("slack is down")


def test_fanout_isolates_a_failing_notifier(caplog: pytest.LogCaptureFixture) -> None:
    first, last = FakeNotifier(), FakeNotifier()
    fanout = FanoutNotifier([first, _Broken(), FakeNotifier(fail_with=OSError("gone")), last])
    fanout.post(_event("promoted"))
    fanout.post(_event("rolled_back"))
    assert first.kinds() == last.kinds() == ["promoted", "rolled_back"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert "_Broken failed to post iris:v3:production:promoted:1" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "slack is down" in str(errors[0].exc_info[1])


def test_idempotency_key_is_stable() -> None:
    event = _event()
    assert event.key == "iris:v3:production:step_reached:1"
    later = replace(event, at=NOW + timedelta(minutes=5), message="Again.", detail={"weight": 21})
    assert later.key == event.key
    assert replace(event, step=None).key == "iris:v3:production:step_reached:-"
    assert replace(event, occurrence=2).key == "iris:v3:production:step_reached:1:2"
    different = {
        replace(event, step=2).key,
        replace(event, kind="paused").key,
        replace(event, version=4).key,
        replace(event, environment="staging").key,
        replace(event, model="churn").key,
        event.key,
    }
    assert len(different) == 6


def test_fake_records_keys_in_order() -> None:
    fake = FakeNotifier()
    fake.post(_event("rollout_started", step=None))
    fake.post(_event("step_reached", step=0))
    assert fake.keys() == ["iris:v3:production:rollout_started:-", "iris:v3:production:step_reached:0"]


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _event(at=datetime(2024, 5, 1, 12, 0))

"""A message sent but not recorded sent (a controller killed in between) is not sent again: the outbox and
the console.

Pins down that :func:`deliver_due` records an attempt before it hands a
message to its sender, so that a message whose send completed but whose
``mark_sent`` never came reaches the sender *in doubt* next time; that a
failed attempt leaves it in doubt too (it may have got half-way); and that the
console, whose lines cannot be read back, journals each line (its key, fsynced)
before printing it, so that an event in doubt that the journal holds is not
printed again, while one the journal lacks is printed once. The kill is played
precisely: a wrapper around the real sender raises a ``BaseException`` (which
the outbox does not catch, as a ``SIGKILL`` leaves no ``except`` to run) right
after the real send. Slack and GitHub are in :mod:`tests.test_outbox_doubt_services`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller.backends.delivery import DeliveryError, Sender
from controller.backends.notify import LOGGER_NAME, RolloutEvent
from controller.backends.notify.console import JOURNAL_NAME, ConsoleNotifier, NotificationJournal
from controller.backends.store import OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.clock import Clock, FakeClock
from controller.engine.notices import NotifierSender, queue_event
from controller.engine.outbox import deliver_due

pytestmark = pytest.mark.unit


class Killed(BaseException):
    """The controller killed: nothing after the real send runs, ``mark_sent`` included."""


class KilledAfterSend:
    """Makes the real send, then dies before the outbox can record it."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    def send(self, message: OutboxMessage) -> None:
        self.sender.send(message)
        raise Killed


@pytest.fixture
def store_clock(clock: FakeClock) -> Clock:
    return clock


def event(kind: str = "step_reached", *, step: int = 1, clock: FakeClock) -> RolloutEvent:
    return RolloutEvent(
        kind=kind,  # type: ignore[arg-type]
        model="iris",
        version=2,
        environment="production",
        message=f"Canary step {step} of 2",
        at=clock.now(),
        step=step,
    )


def only(store: SqlStore, destination: str) -> OutboxMessage:
    [message] = [m for m in store.due_messages() if m.destination == destination]
    return message


# ------------------------------------------------------------------ the outbox


class Recorder:
    """Remembers each message it is given, and what the store said of it while it was being sent."""

    def __init__(self, store: SqlStore, *, fail: bool = False) -> None:
        self.store = store
        self.fail = fail
        self.given: list[OutboxMessage] = []
        self.stored_during_send: list[OutboxMessage] = []

    def send(self, message: OutboxMessage) -> None:
        self.given.append(message)
        self.stored_during_send.append(self.store.get_message(message.id))
        if self.fail:
            raise DeliveryError("503 from the service")


def test_the_attempt_is_on_record_before_the_sender_is_called(store: SqlStore, clock: FakeClock) -> None:
    message = store.enqueue(destination="d", key="k", payload={})
    sender = Recorder(store)
    assert deliver_due(store, {"d": sender}, now=clock.now()).sent == 1
    [given], [during] = sender.given, sender.stored_during_send
    assert not given.in_doubt  # a first attempt: nothing to look for
    assert during.in_doubt and during.attempt_started_at == clock.now()  # committed before the send
    after = store.get_message(message.id)
    assert after.sent_at is not None and after.attempt_started_at is None and not after.in_doubt


def test_a_send_the_store_never_heard_of_comes_back_in_doubt(store: SqlStore, clock: FakeClock) -> None:
    message = store.enqueue(destination="d", key="k", payload={})
    with pytest.raises(Killed):
        deliver_due(store, {"d": KilledAfterSend(Recorder(store))}, now=clock.now())
    assert store.get_message(message.id).in_doubt
    sender = Recorder(store)
    assert deliver_due(store, {"d": sender}, now=clock.now()).sent == 1
    assert [m.in_doubt for m in sender.given] == [True]
    assert not store.get_message(message.id).in_doubt


def test_a_failed_attempt_leaves_the_message_in_doubt(store: SqlStore, clock: FakeClock) -> None:
    store.enqueue(destination="d", key="k", payload={})
    assert deliver_due(store, {"d": Recorder(store, fail=True)}, now=clock.now()).failed == 1
    clock.advance(600)
    sender = Recorder(store)
    assert deliver_due(store, {"d": sender}, now=clock.now()).sent == 1
    assert [m.in_doubt for m in sender.given] == [True]  # the 503 may have come after the service acted


def test_a_payload_replaced_after_it_was_sent_is_not_in_doubt(store: SqlStore, clock: FakeClock) -> None:
    store.enqueue(destination="d", key="k", payload={"n": 1})
    deliver_due(store, {"d": Recorder(store)}, now=clock.now())
    store.enqueue(destination="d", key="k", payload={"n": 2})
    sender = Recorder(store)
    deliver_due(store, {"d": sender}, now=clock.now())
    assert [(m.payload, m.in_doubt) for m in sender.given] == [({"n": 2}, False)]


# ----------------------------------------------------------------- the console


@pytest.fixture
def journal(tmp_path: Path) -> NotificationJournal:
    return NotificationJournal(tmp_path / JOURNAL_NAME)


@pytest.fixture
def console(journal: NotificationJournal) -> ConsoleNotifier:
    return ConsoleNotifier(journal=journal)


def printed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]


def test_the_console_journals_a_line_before_printing_it(
    console: ConsoleNotifier, journal: NotificationJournal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal_at_print: list[str] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            journal_at_print.append(journal.path.read_text())

    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    spy = Spy()
    logging.getLogger(LOGGER_NAME).addHandler(spy)
    try:
        console.post(event(clock=clock))
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(spy)
    line = "iris v2 in production: step_reached — Canary step 1 of 2"
    assert journal_at_print == [f"iris:v2:production:step_reached:1\t{line}\n"]
    assert console.announced(event(clock=clock)) and not console.announced(event(step=2, clock=clock))


def test_a_console_line_printed_but_not_recorded_is_not_printed_again(
    store: SqlStore, console: ConsoleNotifier, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    queue_event(store, None, event(clock=clock))
    sender = NotifierSender(console, announced=console.announced)
    with pytest.raises(Killed):
        deliver_due(store, {"console": KilledAfterSend(sender)}, now=clock.now())
    assert only(store, "console").in_doubt
    restarted = ConsoleNotifier(journal=NotificationJournal(console.journal.path))  # type: ignore[union-attr]
    stats = deliver_due(
        store, {"console": NotifierSender(restarted, announced=restarted.announced)}, now=clock.now()
    )
    assert stats.sent == 1
    assert printed(caplog) == ["iris v2 in production: step_reached — Canary step 1 of 2"]
    assert store.due_messages(now=clock.now()) == []  # marked sent


def test_a_console_message_in_doubt_the_journal_lacks_is_printed_once(
    store: SqlStore, console: ConsoleNotifier, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    queue_event(store, None, event(clock=clock))
    store.mark_attempt(only(store, "console").id)  # killed after the mark, before the journal
    sender = NotifierSender(console, announced=console.announced)
    assert deliver_due(store, {"console": sender}, now=clock.now()).sent == 1
    assert deliver_due(store, {"console": sender}, now=clock.now()).sent == 0
    assert printed(caplog) == ["iris v2 in production: step_reached — Canary step 1 of 2"]
    assert console.announced(event(clock=clock))


def test_without_a_way_to_tell_a_message_in_doubt_is_posted_again(
    store: SqlStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    queue_event(store, None, event(clock=clock))
    sender = NotifierSender(ConsoleNotifier())  # no journal: at least once
    with pytest.raises(Killed):
        deliver_due(store, {"console": KilledAfterSend(sender)}, now=clock.now())
    deliver_due(store, {"console": sender}, now=clock.now())
    assert len(printed(caplog)) == 2


def test_a_journal_line_is_one_line_and_a_key_cannot_break_it(journal: NotificationJournal) -> None:
    journal.append("a:1", "two\nlines")
    assert journal.path.read_text() == "a:1\ttwo lines\n"
    assert journal.holds("a:1") and not journal.holds("a") and not journal.holds("two lines")
    with pytest.raises(ValueError, match="tab or a newline"):
        journal.append("a\tb", "x")
    assert not NotificationJournal(journal.path.parent / "absent").holds("a:1")

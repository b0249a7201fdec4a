"""The GitHub poller (controller.backends.forge.github_poll): the fallback for missed webhook deliveries.

Runs the real poller, with PyGithub, against a local GitHub API
(tests/fakes/github_api), and handles what it queues with the real handler
(controller.engine.github_events, through the inbox's dispatcher) on a real
store. Pins down: an open pull request the store never heard of is queued as
``opened`` and recorded with its head, author and fork flag (a same-repository
branch is reconciled by name, a fork as ``pull/<n>/head``); a new head is
``synchronize``, one closed while nobody listened is ``closed`` (merged or
not, the base branch reconciled after a merge), one reopened is ``reopened``;
polling again before or after the events are handled queues nothing twice.
Comments said before the first poll are history, even when edited later; a
later ``/flywheel`` comment is queued once and runs once, whether its webhook
came first or after, and not again when edited, and a command edited into an
older comment is not run (webhooks ignore edits too); it says whether it is on
a pull request (asking GitHub when the store does not know); a comment without
a command is not queued. GitHub down, failing or rate limited makes
``poll_if_due`` return 0 without raising and wait (doubling backoff, or until
the limit resets) before reading again, and loses nothing.
``FLYWHEEL_GITHUB_POLL_SECONDS`` sets the interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from github import Auth

from controller.backends.forge.github import GitHubForge, GitHubSender
from controller.backends.forge.github_poll import GitHubPoller
from controller.backends.store import InboxEvent, NotFound, OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.github_events import GITHUB_EVENT_KINDS, GitHubEvents
from controller.engine.inbox import InboxDispatcher
from controller.engine.outbox import deliver_due
from controller.settings import GitHubSettings
from controller.specs import Catalog
from tests.fakes.github_api import FakeGitHub, issue_comment_event

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghp_test_token"
INTERVAL = 60.0
SHA1, SHA2 = "1" * 40, "2" * 40
LONG_AGO = "2024-05-01T12:00:00Z"


class PollClock:
    """The real wall clock (the fake GitHub API stamps with it) and a monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.ticks = 1000.0

    def now(self) -> datetime:
        return SYSTEM_CLOCK.now()

    def timestamp(self) -> float:
        return SYSTEM_CLOCK.timestamp()

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.ticks += seconds


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN) as server:
        yield server


@pytest.fixture
def poll_clock() -> PollClock:
    return PollClock()


@pytest.fixture
def poller(store: SqlStore, fake: FakeGitHub, poll_clock: PollClock) -> Iterator[GitHubPoller]:
    polling = GitHubPoller(
        store,
        pulls=store,
        repository=fake.repository,
        auth=Auth.Token(TOKEN),
        base_url=fake.api_url,
        timeout=2,
        interval_seconds=INTERVAL,
        clock=poll_clock,
    )
    yield polling
    polling.close()


def no_retrain(model: str, ref: str | None) -> int:
    raise AssertionError(f"nothing here asks to retrain, yet {model} on {ref} was")


def process(store: SqlStore, catalog: Catalog) -> set[str]:
    """Handle the inbox as the controller does; the refs to reconcile."""
    handler = GitHubEvents(
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        replies=lambda repository: GitHubForge(store, repository),
        retrain=no_retrain,
    )
    return InboxDispatcher(store, dict.fromkeys(GITHUB_EVENT_KINDS, handler)).handle_due()


def events(store: SqlStore) -> list[InboxEvent]:
    """Every inbox event, oldest first."""
    found = []
    for event_id in range(1, 100):
        try:
            found.append(store.get_event(event_id))
        except NotFound:
            continue
    return found


def pending(store: SqlStore) -> list[str]:
    """The kinds of the inbox events not handled yet."""
    return [e.kind for e in events(store) if e.completed_at is None]


def outbox(store: SqlStore, kind: str) -> list[OutboxMessage]:
    due = store.due_messages(now=datetime.now(UTC) + timedelta(days=1))
    return [m for m in due if m.payload["kind"] == kind]


def deliver(store: SqlStore, fake: FakeGitHub) -> None:
    sender = GitHubSender(
        store,
        auth=Auth.Token(TOKEN),
        base_url=fake.api_url,
        timeout=2,
        seconds_between_requests=None,
        seconds_between_writes=None, clock=SYSTEM_CLOCK
    )
    try:
        deliver_due(store, {"github": sender}, now=datetime.now(UTC) + timedelta(seconds=1))
    finally:
        sender.close()


def open_pulls(store: SqlStore) -> dict[int, bool]:
    """The pull requests recorded open: number -> whether its head is in a fork."""
    return {pull.number: pull.fork for pull in store.open_pull_requests()}


def audited(store: SqlStore, action: str) -> int:
    return sum(1 for entry in store.audit() if entry.action == action)


def github_time(seconds_from_now: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def listening(poller: GitHubPoller, store: SqlStore, catalog: Catalog) -> None:
    """The first poll (which starts listening for comments), with what it queued handled."""
    poller.poll()
    process(store, catalog)


# ------------------------------------------------------------- pull requests


@pytest.mark.parametrize(
    ("fork", "author", "head_ref", "ref"),
    [
        (False, "bob-ml", "tune-iris", "tune-iris"),
        (True, "stranger", "main", "pull/6/head"),  # a fork's branch name says nothing about ours
    ],
)
def test_a_missed_pull_request_is_queued_as_opened_and_recorded(
    store: SqlStore,
    catalog: Catalog,
    fake: FakeGitHub,
    poller: GitHubPoller,
    fork: bool,
    author: str,
    head_ref: str,
    ref: str,
) -> None:
    fake.add_pull(6, head_ref=head_ref, head_sha=SHA1, author=author, fork=fork)
    assert poller.poll_if_due() == 1
    (event,) = events(store)
    assert (event.source, event.kind) == ("github", "pull_request.opened")
    assert event.payload["flywheel_polled"] is True
    assert event.payload["repository"] == {"full_name": fake.repository}

    assert process(store, catalog) == {ref}
    info = store.pull_request(6)
    assert info is not None
    assert (info.head_sha, info.author, info.fork, info.state, info.base_ref) == (
        SHA1,
        author,
        fork,
        "open",
        "main",
    )
    assert open_pulls(store) == {6: fork}
    assert events(store)[0].error is None

    assert poller.poll() == 0  # recorded as it is on GitHub: nothing to say
    assert pending(store) == []


def test_polling_twice_before_handling_queues_each_event_once(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    fake.add_pull(6, head_ref="tune-cancer", head_sha=SHA2, author="alice-ml")
    assert poller.poll() == 2
    assert poller.poll() == 0
    assert pending(store) == ["pull_request.opened", "pull_request.opened"]
    assert process(store, catalog) == {"tune-iris", "tune-cancer"}
    assert poller.poll() == 0
    assert len(events(store)) == 2


def test_new_head_synchronizes_and_a_merge_closes(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    assert poller.poll() == 1
    assert process(store, catalog) == {"tune-iris"}

    fake.push_pull(5, SHA2)
    assert poller.poll() == 1
    assert pending(store) == ["pull_request.synchronize"]
    assert process(store, catalog) == {"tune-iris"}
    info = store.pull_request(5)
    assert info is not None and info.head_sha == SHA2 and info.state == "open"

    fake.close_pull(5, merged=True)
    assert poller.poll() == 1
    (closed,) = [e for e in events(store) if e.completed_at is None]
    assert closed.kind == "pull_request.closed" and closed.payload["pull_request"]["merged"] is True
    assert process(store, catalog) == {"tune-iris", "main"}  # the base branch changed too
    info = store.pull_request(5)
    assert info is not None and (info.state, info.merged, info.head_sha) == ("closed", True, SHA2)
    assert open_pulls(store) == {}

    assert poller.poll() == 0  # no longer listed, and recorded closed
    assert pending(store) == []


def test_closed_without_merge_then_reopened(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    pull = fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    poller.poll()
    process(store, catalog)

    fake.close_pull(5)
    assert poller.poll() == 1
    assert process(store, catalog) == {"tune-iris"}  # no merge: main is unchanged
    info = store.pull_request(5)
    assert info is not None and (info.state, info.merged) == ("closed", False)
    assert open_pulls(store) == {}

    # reopened on GitHub, a little later (the fake's clock has whole seconds, like GitHub's)
    pull.update(state="open", closed_at=None, updated_at=github_time(5))
    assert poller.poll() == 1
    assert pending(store) == ["pull_request.reopened"]
    assert process(store, catalog) == {"tune-iris"}
    info = store.pull_request(5)
    assert info is not None and info.state == "open"
    assert open_pulls(store) == {5: False}


# ------------------------------------------------------------------ comments


def test_comments_before_the_first_poll_are_history(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    old = fake.add_comment(5, "/flywheel help", login="alice-ml", at=LONG_AGO)
    assert poller.poll() == 1  # the pull request; the comment is from before Flywheel listened
    assert pending(store) == ["pull_request.opened"]
    process(store, catalog)

    old.update(body="/flywheel help\n\n(edited)", updated_at=github_time())  # listed again: edited since
    assert poller.poll() == 0
    assert pending(store) == []
    assert not store.comment_handled(old["id"])
    assert audited(store, "command.help") == 0


def test_a_missed_comment_command_runs_once_and_is_answered_once(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    listening(poller, store, catalog)

    asked = fake.add_comment(5, "/flywheel help", login="alice-ml")
    fake.add_comment(5, "LGTM, thanks", login="alice-ml")  # no command: not queued
    assert poller.poll() == 1
    assert poller.poll() == 0  # queued already
    (event,) = [e for e in events(store) if e.completed_at is None]
    assert event.kind == "issue_comment.created"
    assert event.payload["comment"]["id"] == asked["id"]
    issue = event.payload["issue"]
    assert issue["number"] == 5 and issue["pull_request"]["url"].endswith(f"/repos/{fake.repository}/pulls/5")

    assert process(store, catalog) == set()
    assert store.comment_handled(asked["id"])
    deliver(store, fake)
    replies = [c for c in fake.comments_on(5) if c["user"]["login"] == "flywheel-bot"]
    assert len(replies) == 1
    assert "@alice-ml" in replies[0]["body"] and "`/flywheel help`" in replies[0]["body"]
    assert sorted(r["content"] for r in fake.reactions if r["comment_id"] == asked["id"]) == ["+1", "eyes"]

    assert poller.poll() == 0  # the bot's reply is no command, and the command was handled
    assert process(store, catalog) == set()
    deliver(store, fake)
    assert len([c for c in fake.comments_on(5) if c["user"]["login"] == "flywheel-bot"]) == 1
    assert audited(store, "command.help") == 1


def webhook_for(fake: FakeGitHub, comment: dict[str, Any], *, number: int) -> dict[str, Any]:
    """GitHub's webhook payload for a comment made on the fake."""
    payload = issue_comment_event(
        comment["body"], login=comment["user"]["login"], number=number, comment_id=comment["id"]
    )
    payload["repository"]["full_name"] = fake.repository
    return payload


def bot_replies(fake: FakeGitHub, number: int) -> list[dict[str, Any]]:
    return [c for c in fake.comments_on(number) if c["user"]["login"] == "flywheel-bot"]


def test_a_comment_delivered_by_webhook_is_not_run_again_by_polling(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    listening(poller, store, catalog)

    asked = fake.add_comment(5, "/flywheel help", login="alice-ml")
    assert store.put_event(
        source="github",
        delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
        kind="issue_comment.created",
        payload=webhook_for(fake, asked, number=5),
    )
    process(store, catalog)
    assert len(outbox(store, "reply")) == 1

    assert poller.poll() == 0  # handled already: not even queued
    assert pending(store) == []
    process(store, catalog)
    assert len(outbox(store, "reply")) == 1
    assert audited(store, "command.help") == 1
    deliver(store, fake)
    assert len(bot_replies(fake, 5)) == 1


def test_a_late_webhook_of_a_polled_comment_runs_nothing(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    listening(poller, store, catalog)

    asked = fake.add_comment(5, "/flywheel help", login="alice-ml")
    assert poller.poll() == 1
    process(store, catalog)
    assert store.put_event(
        source="github",
        delivery_id="8a1f0c2e-cc78-11e3-81ab-4c9367dc0958",
        kind="issue_comment.created",
        payload=webhook_for(fake, asked, number=5),
    )
    process(store, catalog)
    assert len(outbox(store, "reply")) == 1
    assert audited(store, "command.help") == 1
    assert all(e.completed_at is not None and e.error is None for e in events(store))
    deliver(store, fake)
    assert len(bot_replies(fake, 5)) == 1


def test_a_handled_comment_edited_later_is_not_run_again(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    listening(poller, store, catalog)
    asked = fake.add_comment(5, "/flywheel help", login="alice-ml")
    assert poller.poll() == 1
    process(store, catalog)

    asked.update(body="/flywheel help\n/flywheel status iris", updated_at=github_time(5))
    assert poller.poll() == 0
    assert process(store, catalog) == set()
    assert (audited(store, "command.help"), audited(store, "command.status")) == (1, 0)
    assert len(outbox(store, "reply")) == 1


def test_a_command_edited_into_a_comment_is_not_run_as_webhooks_ignore_edits(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    listening(poller, store, catalog)
    remark = fake.add_comment(5, "Nice work.", login="alice-ml")
    assert poller.poll() == 0
    remark.update(body="Nice work.\n/flywheel help", updated_at=github_time(5))
    assert poller.poll() == 0
    assert process(store, catalog) == set() and audited(store, "command.help") == 0


def test_a_comment_on_a_pull_request_not_recorded_asks_github_what_it_is(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    listening(poller, store, catalog)
    fake.add_pull(9, head_ref="tune-iris", head_sha=SHA1, author="bob-ml", state="closed")
    fake.add_comment(9, "/flywheel status iris", login="alice-ml")
    assert poller.poll() == 1
    (event,) = [e for e in events(store) if e.completed_at is None]
    assert "pull_request" in event.payload["issue"]
    assert any(r.method == "GET" and r.path.endswith("/issues/9") for r in fake.requests)
    process(store, catalog)
    assert audited(store, "command.status") == 1


def test_a_comment_on_an_issue_is_queued_as_not_a_pull_request(
    store: SqlStore, catalog: Catalog, fake: FakeGitHub, poller: GitHubPoller
) -> None:
    listening(poller, store, catalog)
    fake.issues.add(3)  # an issue, not a pull request
    fake.add_comment(3, "/flywheel ok-to-test", login="alice-ml")
    assert poller.poll() == 1
    (event,) = [e for e in events(store) if e.completed_at is None]
    assert event.payload["issue"] == {"number": 3}
    process(store, catalog)
    assert store.audit()[-1].detail["refusal"] == "not_a_pull_request"


# -------------------------------------------------------- outages and limits


@pytest.mark.parametrize("outage", ["down", "502"])
def test_an_outage_backs_off_and_loses_nothing(
    store: SqlStore,
    catalog: Catalog,
    fake: FakeGitHub,
    poller: GitHubPoller,
    poll_clock: PollClock,
    outage: str,
) -> None:
    if outage == "down":
        fake.down = True
    else:
        fake.fail(502, "Server Error")
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    assert poller.poll_if_due() == 0  # logged, not raised
    assert pending(store) == []

    fake.down = False
    asked = len(fake.requests)
    poll_clock.advance(2 * INTERVAL - 1)  # the first backoff is twice the interval
    assert poller.poll_if_due() == 0
    assert len(fake.requests) == asked  # not asked at all

    poll_clock.advance(1)
    assert poller.poll_if_due() == 1
    assert pending(store) == ["pull_request.opened"]
    assert process(store, catalog) == {"tune-iris"}

    poll_clock.advance(INTERVAL - 1)  # back to the plain interval
    assert poller.poll_if_due() == 0
    poll_clock.advance(1)
    assert poller.poll_if_due() == 0  # polled, nothing new
    assert len(fake.requests) > asked


def test_backoff_doubles_while_github_keeps_failing(
    fake: FakeGitHub, poller: GitHubPoller, poll_clock: PollClock
) -> None:
    fake.fail(502, "Server Error", times=3)
    assert poller.poll_if_due() == 0  # the first of three failures
    attempts = [poll_clock.monotonic()]
    while len(attempts) < 5:
        poll_clock.advance(INTERVAL / 2)
        asked = len(fake.requests)
        assert poller.poll_if_due() == 0
        if len(fake.requests) > asked:
            attempts.append(poll_clock.monotonic())
    gaps = [later - earlier for earlier, later in pairwise(attempts)]
    assert gaps == [2 * INTERVAL, 4 * INTERVAL, 8 * INTERVAL, INTERVAL]  # then the interval again


def test_a_rate_limit_waits_until_it_resets(
    store: SqlStore, fake: FakeGitHub, poller: GitHubPoller, poll_clock: PollClock
) -> None:
    fake.add_pull(5, head_ref="tune-iris", head_sha=SHA1, author="bob-ml")
    fake.exhaust_rate_limit(reset_in=600)
    assert poller.poll_if_due() == 0
    asked = len(fake.requests)

    poll_clock.advance(599)  # well past the backoff, not yet the reset
    assert poller.poll_if_due() == 0
    assert len(fake.requests) == asked

    poll_clock.advance(10)
    assert poller.poll_if_due() == 1
    assert pending(store) == ["pull_request.opened"]


def test_a_secondary_rate_limit_waits_for_retry_after(
    fake: FakeGitHub, poller: GitHubPoller, poll_clock: PollClock
) -> None:
    fake.secondary_rate_limit(retry_after=300)
    assert poller.poll_if_due() == 0
    asked = len(fake.requests)
    poll_clock.advance(299)
    assert poller.poll_if_due() == 0
    assert len(fake.requests) == asked
    poll_clock.advance(1)
    poller.poll_if_due()
    assert len(fake.requests) > asked


# ------------------------------------------------------------------ settings


def settings_env(**extra: str) -> dict[str, str]:
    return {"FLYWHEEL_GITHUB_REPOSITORY": "octo-org/models", "FLYWHEEL_GITHUB_TOKEN": TOKEN, **extra}


def test_poll_seconds_from_the_environment(store: SqlStore) -> None:
    assert GitHubSettings.from_env(settings_env()).poll_seconds == 60
    settings = GitHubSettings.from_env(settings_env(FLYWHEEL_GITHUB_POLL_SECONDS="30"))
    assert settings.poll_seconds == 30
    poller = GitHubPoller.from_settings(store, settings, pulls=store, clock=SYSTEM_CLOCK)
    try:
        assert poller.interval_seconds == 30 and poller.repository == "octo-org/models"
    finally:
        poller.close()
    assert GitHubSettings.from_env(settings_env(FLYWHEEL_GITHUB_POLL_SECONDS="0")).poll_seconds == 0


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_bad_poll_seconds_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="FLYWHEEL_GITHUB_POLL_SECONDS"):
        GitHubSettings.from_env(settings_env(FLYWHEEL_GITHUB_POLL_SECONDS=value))

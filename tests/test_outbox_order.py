"""The outbox honours rate limits per destination and keeps order per ordering key.

Pins down, on the store: of the messages not yet delivered under one ordering
key only the one queued first is due (a later one never overtakes it, one in
backoff holds back only its own key, one given up on holds back nothing); a
destination's pause keeps all of its messages back until it ends, only ever
grows, and survives a restart. Through :func:`deliver_due`, driven by the
injected :class:`FakeClock`, with the real slack-sdk and PyGithub clients
against local servers that speak Slack's and GitHub's wire formats: a 429
with ``Retry-After`` reaches the server once (no hidden retry in the client),
nothing more reaches it before the time is up, other destinations keep
flowing, and after an outage every Slack thread reads in the order it was
queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from github import Auth

from controller.backends.delivery import rollout_thread
from controller.backends.forge import ReviewTarget
from controller.backends.forge.github import GitHubForge, GitHubSender
from controller.backends.notify import RolloutEvent
from controller.backends.notify.slack import SlackSender
from controller.backends.store import OutboxMessage, open_store
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.engine.notices import NotifierSender, queue_event
from controller.engine.outbox import deliver_due
from controller.engine.report import marker
from controller.specs import Model, load_tree
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import TOKEN, FakeSlack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO = "octo-org/models"
GITHUB_TOKEN = "ghp_test_token"
SHA = "1" * 40


@pytest.fixture(scope="module")
def model() -> Model:
    return load_tree(REPO_ROOT).models["breast-cancer"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state: Path, clock: FakeClock) -> Iterator[SqlStore]:
    opened = open_store(state, clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def slack_sender(store: SqlStore, slack: FakeSlack) -> SlackSender:
    return SlackSender(token=TOKEN, store=store, base_url=slack.api_url, timeout=2)


class Console:
    """A notifier that keeps what it was given."""

    def __init__(self) -> None:
        self.posted: list[RolloutEvent] = []

    def post(self, event: RolloutEvent) -> None:
        self.posted.append(event)


def events(version: int, *kinds: str, clock: FakeClock) -> list[RolloutEvent]:
    at = clock.now()
    return [
        RolloutEvent(
            kind=kind,  # type: ignore[arg-type]
            model="breast-cancer",
            version=version,
            environment="production",
            message=f"breast-cancer v{version} {kind} #{n}",
            at=at + timedelta(seconds=n),
            detail={},
            step=n,
        )
        for n, kind in enumerate(kinds)
    ]


def replies(slack: FakeSlack, version: int) -> list[str]:
    """The thread replies under the parent message of ``version``, in the order Slack got them."""
    (parent,) = [p for p in slack.parents() if p.text.startswith(f"breast-cancer v{version}")]
    return [r.text.rsplit(": ", 1)[-1] for r in slack.replies(parent)]


def queue(store: SqlStore, key: str, order: str, destination: str = "d") -> OutboxMessage:
    return store.enqueue(destination=destination, key=key, payload={"k": key}, ordering_key=order)


def due_keys(store: SqlStore, clock: FakeClock, **options: object) -> list[str]:
    return [m.key for m in store.ready_messages(now=clock.now(), **options)]  # type: ignore[arg-type]


# ------------------------------------------------------------------ the store


def test_only_the_first_undelivered_message_of_an_ordering_key_is_due(
    store: SqlStore, clock: FakeClock
) -> None:
    first, second = queue(store, "a1", "a"), queue(store, "a2", "a")
    queue(store, "b1", "b")
    queue(store, "alone", "alone")
    assert due_keys(store, clock) == ["a1", "b1", "alone"]
    store.mark_sent(first.id)
    assert due_keys(store, clock) == ["a2", "b1", "alone"]  # all queued at the same time: by id
    store.mark_sent(second.id)
    assert "a2" not in due_keys(store, clock)


def test_a_message_in_backoff_holds_back_its_own_key_only(store: SqlStore, clock: FakeClock) -> None:
    first = queue(store, "a1", "a")
    queue(store, "a2", "a")
    queue(store, "b1", "b")
    store.mark_failed(first.id, error="502", retry_at=clock.now() + timedelta(seconds=60))
    assert due_keys(store, clock) == ["b1"]  # a2 waits behind a1, b1 goes on
    clock.advance(60)
    assert due_keys(store, clock) == ["b1", "a1"]


def test_a_message_given_up_on_holds_nothing_back(store: SqlStore, clock: FakeClock) -> None:
    first = queue(store, "a1", "a")
    queue(store, "a2", "a")
    store.mark_failed(first.id, error="channel_not_found", retry_at=None)
    assert due_keys(store, clock) == ["a2"]


def test_the_ordering_key_defaults_to_the_key_and_is_kept_when_the_payload_is_replaced(
    store: SqlStore,
) -> None:
    assert store.enqueue(destination="d", key="k", payload={"v": 1}).ordering_key == "k"
    again = store.enqueue(destination="d", key="k", payload={"v": 2}, ordering_key="other")
    assert (again.ordering_key, again.payload, again.revision) == ("k", {"v": 2}, 2)


def test_a_paused_destination_has_nothing_due_until_the_pause_ends(store: SqlStore, clock: FakeClock) -> None:
    queue(store, "s1", "s1", destination="slack")
    queue(store, "g1", "g1", destination="github")
    store.pause_destination("slack", until=clock.now() + timedelta(seconds=4), reason="429")
    assert due_keys(store, clock) == ["g1"]
    clock.advance(3.9)
    assert due_keys(store, clock) == ["g1"]
    clock.advance(0.1)
    assert due_keys(store, clock) == ["s1", "g1"]
    assert store.destination_pauses(now=clock.now()) == []


def test_a_pause_only_grows(store: SqlStore, clock: FakeClock) -> None:
    later = clock.now() + timedelta(seconds=60)
    store.pause_destination("slack", until=later, reason="Retry-After: 60")
    kept = store.pause_destination("slack", until=clock.now() + timedelta(seconds=5), reason="Retry-After: 5")
    assert (kept.until, kept.reason) == (later, "Retry-After: 60")
    (pause,) = store.destination_pauses(now=clock.now())
    assert (pause.destination, pause.until) == ("slack", later)


def test_only_the_destinations_asked_for(store: SqlStore, clock: FakeClock) -> None:
    queue(store, "s1", "s1", destination="slack")
    queue(store, "g1", "g1", destination="github")
    assert due_keys(store, clock, destinations={"github"}) == ["g1"]
    assert due_keys(store, clock, destinations=set()) == []


# ---------------------------------------------------------------- Slack


def test_a_429_pauses_every_slack_message_and_nothing_reaches_slack_before_retry_after(
    store: SqlStore, clock: FakeClock, slack: FakeSlack, model: Model
) -> None:
    console = Console()
    senders = {"slack": slack_sender(store, slack), "console": NotifierSender(console)}
    for event in events(3, "rollout_started", "step_reached", "promoted", clock=clock):
        queue_event(store, model, event)
    for event in events(4, "rollout_started", clock=clock):
        queue_event(store, model, event)  # another thread: paused all the same
    slack.fail(429, "ratelimited", retry_after=4)

    stats = deliver_due(store, senders, now=clock.now())
    assert stats.paused == {"slack"} and stats.failed == 1
    assert len(slack.calls) == 1  # one request: slack-sdk did not retry behind the outbox's back
    assert len(console.posted) == 4  # the console is another destination: it keeps flowing
    for _ in range(3):  # Slack's other messages come back 1 to 3 seconds later: not one is sent
        clock.advance(1)
        assert deliver_due(store, senders, now=clock.now()).sent == 0
    assert len(slack.calls) == 1

    clock.advance(1)  # Retry-After is up
    assert deliver_due(store, senders, now=clock.now()).sent == 4
    assert replies(slack, 3) == [
        e.message for e in events(3, "rollout_started", "step_reached", "promoted", clock=clock)
    ]


def test_the_pause_survives_a_restart(
    state: Path, store: SqlStore, clock: FakeClock, slack: FakeSlack, model: Model
) -> None:
    for event in events(3, "rollout_started", "step_reached", clock=clock):
        queue_event(store, model, event)
    slack.fail(429, "ratelimited", retry_after=30)
    deliver_due(store, {"slack": slack_sender(store, slack)}, now=clock.now())
    store.close()

    restarted = open_store(state, clock=clock)
    try:
        sender = slack_sender(restarted, slack)
        clock.advance(29)
        assert deliver_due(restarted, {"slack": sender}, now=clock.now()).sent == 0
        assert len(slack.calls) == 1
        clock.advance(1)
        assert deliver_due(restarted, {"slack": sender}, now=clock.now()).sent == 2
    finally:
        restarted.close()


def test_a_later_reply_never_goes_before_an_earlier_one_in_backoff(
    store: SqlStore, clock: FakeClock, slack: FakeSlack, model: Model
) -> None:
    sender = {"slack": slack_sender(store, slack)}
    queue_event(store, model, events(3, "rollout_started", clock=clock)[0])
    assert deliver_due(store, sender, now=clock.now()).sent == 1
    step, promoted = events(3, "step_reached", "promoted", clock=clock)
    queue_event(store, model, step)
    slack.fail(500, "internal_error")  # step_reached's edit fails: it backs off
    assert deliver_due(store, sender, now=clock.now()).failed == 1
    queue_event(store, model, promoted)
    queue_event(store, model, events(4, "rollout_started", clock=clock)[0])  # another thread
    clock.advance(1)  # less than any backoff
    assert deliver_due(store, sender, now=clock.now()).sent == 1  # v4's thread only
    assert replies(slack, 3) == ["breast-cancer v3 rollout_started #0"]
    clock.advance(10)
    assert deliver_due(store, sender, now=clock.now()).sent == 2
    assert replies(slack, 3) == [
        "breast-cancer v3 rollout_started #0",
        "breast-cancer v3 step_reached #0",
        "breast-cancer v3 promoted #1",
    ]


def test_after_an_outage_every_thread_reads_in_order(
    store: SqlStore, clock: FakeClock, slack: FakeSlack, model: Model
) -> None:
    sender = {"slack": slack_sender(store, slack)}
    kinds = ("rollout_started", "step_reached", "step_reached", "awaiting_approval", "approved", "promoted")
    threads = {version: events(version, *kinds, clock=clock) for version in (3, 4, 5)}
    slack.stop()
    for n in range(len(kinds)):  # queued interleaved, as three rollouts would queue them
        for thread in threads.values():
            queue_event(store, model, thread[n])
        clock.advance(7)
        deliver_due(store, sender, now=clock.now())  # fails: Slack is down; backoffs grow apart
    slack.start()  # the same port again
    for _ in range(30):
        clock.advance(60)
        deliver_due(store, sender, now=clock.now())
    for version, thread in threads.items():
        assert replies(slack, version) == [e.message for e in thread]
    assert [
        m for m in store.due_messages(now=clock.now() + timedelta(days=1)) if m.destination == "slack"
    ] == []


def test_rollout_events_and_slack_decisions_share_the_thread_key(model: Model, store: SqlStore) -> None:
    (event,) = events(3, "awaiting_approval", clock=FakeClock())
    queue_event(store, model, event)
    (message,) = [m for m in store.ready_messages() if m.destination == "slack"]
    assert message.ordering_key == rollout_thread("slack", model="breast-cancer", version=3)


# ---------------------------------------------------------------- GitHub


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(repository=REPO, token=GITHUB_TOKEN) as server:
        server.add_pull(7, head_ref="feature", head_sha=SHA)
        yield server


@pytest.fixture
def github_sender(store: SqlStore, github: FakeGitHub, clock: FakeClock) -> Iterator[GitHubSender]:
    sender = GitHubSender(
        store,
        auth=Auth.Token(GITHUB_TOKEN),
        base_url=github.api_url,
        timeout=2,
        seconds_between_requests=None,
        seconds_between_writes=None,
        clock=clock,
    )
    yield sender
    sender.close()


def test_a_github_rate_limit_pauses_everything_bound_for_github(
    store: SqlStore, clock: FakeClock, github: FakeGitHub, github_sender: GitHubSender
) -> None:
    forge = GitHubForge(store, REPO)
    target = ReviewTarget("7", "iris", SHA, pull_request=7)
    forge.publish_report(target, f"{marker('iris')}\nreport")
    forge.set_status(target, "pending", "training")  # another ordering key, the same destination
    github.secondary_rate_limit(retry_after=60)
    senders = {"github": github_sender}

    stats = deliver_due(store, senders, now=clock.now())
    assert stats.paused == {"github"} and len(github.requests) == 1  # PyGithub did not retry
    clock.advance(59)
    assert deliver_due(store, senders, now=clock.now()).sent == 0
    assert len(github.requests) == 1  # nothing reached GitHub before Retry-After was up
    clock.advance(1)
    deliver_due(store, senders, now=clock.now())
    assert len(github.check_runs) == 1 and len(github.comments) == 1

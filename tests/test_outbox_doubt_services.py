"""A Slack message or a GitHub comment sent but not recorded sent (a controller killed in between) is not
sent again, and one in doubt that the service does not have is sent once.

Pins down, with the real slack-sdk and PyGithub clients against the local
stand-ins of Slack's and GitHub's Web APIs (:mod:`tests.fakes`): the kill is
played precisely, a ``BaseException`` raised right after the service took a
message (after ``chat.postMessage`` or ``create_comment`` answered, before
the sender or the outbox could record anything), and the controller
"restarted" with a new sender on the same store. Slack: a rollout's parent
message is found in the channel's history by its metadata and adopted, a
thread reply in the thread; every message carries its key in Slack's message
metadata; a token that may not read Slack still gets the message out.
GitHub: a report, a command's reply and a check run are found by their
marker or ``external_id`` and adopted, a reaction is idempotent. The console
is in :mod:`tests.test_outbox_doubt`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from github import Auth
from github.Issue import Issue
from github.Repository import Repository

from controller.backends.forge import ReviewTarget
from controller.backends.forge.github import GitHubForge, GitHubSender
from controller.backends.notify import RolloutEvent
from controller.backends.notify.slack import SlackSender
from controller.backends.notify.slack_lookup import METADATA_EVENT_TYPE
from controller.backends.store import OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.clock import Clock, FakeClock
from controller.engine.notices import queue_event
from controller.engine.outbox import deliver_due
from controller.specs import Catalog, Model
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import TOKEN, FakeSlack, Posted
from tests.test_outbox_doubt import Killed, KilledAfterSend

pytestmark = pytest.mark.integration

REPO = "octo-org/models"
SHA = "2" * 40


@pytest.fixture
def store_clock(clock: FakeClock) -> Clock:
    return clock


@pytest.fixture
def model(catalog: Catalog) -> Model:
    return catalog.models["breast-cancer"]  # notifications: Slack, #ml-releases


def dying_after(target: object, name: str, *, call: int = 1) -> Callable[..., Any]:
    """Wrap ``target.name`` so that its ``call``-th call takes effect and then the controller dies."""
    real = getattr(target, name)
    calls = itertools.count(1)

    def dying(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        if next(calls) == call:
            raise Killed
        return answer

    return dying


def only(store: SqlStore) -> OutboxMessage:
    [message] = store.due_messages()
    return message


# ------------------------------------------------------------------- Slack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def slack_sender(store: SqlStore, slack: FakeSlack) -> SlackSender:
    """A new sender on the store: what a restarted controller has."""
    return SlackSender(token=TOKEN, store=store, base_url=slack.api_url, timeout=2)


def event(kind: str, *, step: int | None, clock: FakeClock) -> RolloutEvent:
    return RolloutEvent(
        kind=kind,  # type: ignore[arg-type]
        model="breast-cancer",
        version=3,
        environment="production",
        message=f"{kind} at step {step}",
        at=clock.now(),
        step=step,
    )


def deliver_slack(store: SqlStore, sender: SlackSender | KilledAfterSend, clock: FakeClock) -> int:
    return deliver_due(store, {"slack": sender}, now=clock.now()).sent


def slack_only(store: SqlStore) -> OutboxMessage:
    [message] = [m for m in store.due_messages() if m.destination == "slack"]
    return message


def thread(slack: FakeSlack) -> tuple[Posted, list[str]]:
    [parent] = slack.parents()
    return parent, [reply.text.rsplit(": ", 1)[-1] for reply in slack.replies(parent)]


def sent_everything(store: SqlStore, destination: str) -> bool:
    return not [m for m in store.due_messages() if m.destination == destination]


def test_a_parent_posted_but_not_recorded_is_adopted_not_posted_again(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    sender = slack_sender(store, slack)
    sender.client.chat_postMessage = dying_after(sender.client, "chat_postMessage")  # type: ignore[method-assign]
    with pytest.raises(Killed):  # the parent is in the channel; its ts was never saved
        deliver_slack(store, sender, clock)
    assert len(slack.parents()) == 1 and slack_only(store).in_doubt
    assert store.slack_message(model="breast-cancer", version=3) is None

    assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    parent, replies = thread(slack)
    assert replies == ["rollout_started at step None"]
    assert parent.edits == 1  # adopted, and edited to show where the rollout is
    assert slack.api_calls("conversations.history")[0].args["channel"] == "C0RELEASES"  # found by name
    record = store.slack_message(model="breast-cancer", version=3)
    assert record is not None and (record.channel, record.ts) == (parent.channel, parent.ts)
    assert sent_everything(store, "slack")


def test_a_reply_posted_but_not_recorded_is_not_posted_again(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    deliver_slack(store, slack_sender(store, slack), clock)
    queue_event(store, model, event("step_reached", step=1, clock=clock))
    sender = slack_sender(store, slack)
    sender.client.chat_postMessage = dying_after(sender.client, "chat_postMessage")  # type: ignore[method-assign]
    with pytest.raises(Killed):  # the reply is in the thread; `replied` was never saved
        deliver_slack(store, sender, clock)
    assert thread(slack)[1] == ["rollout_started at step None", "step_reached at step 1"]

    assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    assert thread(slack)[1] == ["rollout_started at step None", "step_reached at step 1"]
    record = store.slack_message(model="breast-cancer", version=3)
    assert record is not None and "breast-cancer:v3:production:step_reached:1" in record.replied
    assert sent_everything(store, "slack")


def test_a_message_sent_whole_but_not_marked_sent_is_not_sent_again(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    with pytest.raises(Killed):
        deliver_slack(store, KilledAfterSend(slack_sender(store, slack)), clock)
    assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    assert thread(slack)[1] == ["rollout_started at step None"]
    assert sent_everything(store, "slack")


def test_a_message_in_doubt_slack_does_not_have_is_posted_once(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    store.mark_attempt(slack_only(store).id)  # killed after the mark, before Slack was asked
    assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    assert slack.api_calls("conversations.history") and slack.api_calls("conversations.replies")  # looked
    assert deliver_slack(store, slack_sender(store, slack), clock) == 0
    parent, replies = thread(slack)
    assert replies == ["rollout_started at step None"] and parent.edits == 0


def test_a_parent_is_found_past_the_first_page_and_others_messages_are_not_adopted(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    sender = slack_sender(store, slack)
    sender.client.chat_postMessage = dying_after(sender.client, "chat_postMessage")  # type: ignore[method-assign]
    with pytest.raises(Killed):
        deliver_slack(store, sender, clock)
    [ours] = slack.parents()
    for n in range(250):  # people talk in the channel afterwards: ours is on history's second page
        slack.post_directly("C0RELEASES", f"chat {n}")
    other = {"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": "slack:thread:breast-cancer:v4"}}
    slack.post_directly("C0RELEASES", "another version's parent", metadata=other)

    assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    assert len(slack.api_calls("conversations.history")) == 2
    assert slack.replies(ours) and ours.edits == 1
    assert len(slack.parents()) == 252  # nothing new at the top level


def test_every_message_carries_its_key_in_slack_metadata(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock
) -> None:
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    queue_event(store, model, event("step_reached", step=1, clock=clock))
    deliver_slack(store, slack_sender(store, slack), clock)
    [parent] = slack.parents()
    keys = [(m.metadata or {}).get("event_payload") for m in [parent, *slack.replies(parent)]]
    assert keys == [
        {"key": "slack:thread:breast-cancer:v3"},
        {"key": "breast-cancer:v3:production:rollout_started:-"},
        {"key": "breast-cancer:v3:production:step_reached:1"},
    ]
    assert {(m.metadata or {}).get("event_type") for m in slack.messages.values()} == {"flywheel_outbox"}


def test_a_token_that_may_not_read_still_gets_a_message_in_doubt_out(
    store: SqlStore, slack: FakeSlack, model: Model, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slack.refuse("conversations.list")
    queue_event(store, model, event("rollout_started", step=None, clock=clock))
    store.mark_attempt(slack_only(store).id)
    with caplog.at_level(logging.WARNING):
        assert deliver_slack(store, slack_sender(store, slack), clock) == 1
    assert thread(slack)[1] == ["rollout_started at step None"]
    assert "missing_scope" in caplog.text and "channels:history" in caplog.text


# ------------------------------------------------------------------ GitHub


@pytest.fixture
def pull(github: FakeGitHub) -> int:
    github.add_pull(7, head_ref="feature", head_sha=SHA)
    return 7


@pytest.fixture
def forge(store: SqlStore) -> GitHubForge:
    return GitHubForge(store, REPO)


@pytest.fixture
def github_sender(
    store: SqlStore, github: FakeGitHub, clock: FakeClock
) -> Iterator[Callable[[], GitHubSender]]:
    made: list[GitHubSender] = []

    def make() -> GitHubSender:
        """A new sender on the store: what a restarted controller has."""
        made.append(
            GitHubSender(
                store,
                auth=Auth.Token("ghp_test_token"),
                base_url=github.api_url,
                timeout=2,
                seconds_between_requests=None,
                seconds_between_writes=None,
                clock=clock,
            )
        )
        return made[-1]

    yield make
    for sender in made:
        sender.close()


def deliver_github(store: SqlStore, sender: GitHubSender | KilledAfterSend, clock: FakeClock) -> int:
    return deliver_due(store, {"github": sender}, now=clock.now()).sent


TARGET = ReviewTarget("7", "iris", SHA, pull_request=7)


@pytest.mark.parametrize("kind", ["report", "reply"])
def test_a_comment_posted_but_not_recorded_is_adopted_not_posted_again(
    kind: str,
    store: SqlStore,
    forge: GitHubForge,
    github: FakeGitHub,
    github_sender: Callable[[], GitHubSender],
    pull: int,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "report":
        forge.publish_report(TARGET, "<!-- flywheel:report model=iris -->\nthe report")
    else:
        forge.reply(pull, "ran it", in_reply_to=500)
    with monkeypatch.context() as patch:
        patch.setattr(Issue, "create_comment", dying_after(Issue, "create_comment"))
        with pytest.raises(Killed):  # the comment is on the pull request; its id was never remembered
            deliver_github(store, github_sender(), clock)
    assert len(github.comments_on(pull)) == 1 and only(store).in_doubt

    assert deliver_github(store, github_sender(), clock) == 1
    [comment] = github.comments_on(pull)
    assert comment["body"].endswith("the report" if kind == "report" else "ran it")
    assert store.due_messages() == []


def test_a_check_run_created_but_not_recorded_is_adopted_by_its_external_id(
    store: SqlStore,
    forge: GitHubForge,
    github: FakeGitHub,
    github_sender: Callable[[], GitHubSender],
    pull: int,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forge.set_status(TARGET, "pending", "training")
    key = only(store).key
    with monkeypatch.context() as patch:
        patch.setattr(Repository, "create_check_run", dying_after(Repository, "create_check_run"))
        with pytest.raises(Killed):
            deliver_github(store, github_sender(), clock)
    [ours] = github.check_runs.values()
    assert ours["external_id"] == key
    github.check_runs[ours["id"] + 1000] = {**ours, "id": ours["id"] + 1000, "external_id": "someone-else"}

    assert deliver_github(store, github_sender(), clock) == 1
    assert len(github.check_runs) == 2  # none created
    assert [r.path for r in github.writes()][-1].endswith(f"/check-runs/{ours['id']}")  # ours, by its key
    assert store.due_messages() == []


def test_a_reaction_sent_but_not_marked_sent_is_not_doubled(
    store: SqlStore,
    forge: GitHubForge,
    github: FakeGitHub,
    github_sender: Callable[[], GitHubSender],
    pull: int,
    clock: FakeClock,
) -> None:
    comment = github.add_comment(pull, "/flywheel retrain")
    forge.react(comment["id"], "eyes")
    with pytest.raises(Killed):
        deliver_github(store, KilledAfterSend(github_sender()), clock)
    assert deliver_github(store, github_sender(), clock) == 1
    assert [r["content"] for r in github.reactions] == ["eyes"]


@pytest.mark.parametrize("kind", ["report", "reply", "check"])
def test_a_github_message_in_doubt_github_does_not_have_is_sent_once(
    kind: str,
    store: SqlStore,
    forge: GitHubForge,
    github: FakeGitHub,
    github_sender: Callable[[], GitHubSender],
    pull: int,
    clock: FakeClock,
) -> None:
    if kind == "report":
        forge.publish_report(TARGET, "<!-- flywheel:report model=iris -->\nthe report")
    elif kind == "reply":
        forge.reply(pull, "ran it", in_reply_to=500)
    else:
        forge.set_status(TARGET, "success", "passed")
    store.mark_attempt(only(store).id)  # killed after the mark, before GitHub was asked
    sender = github_sender()
    assert deliver_github(store, sender, clock) == 1
    assert deliver_github(store, sender, clock) == 0
    made = len(github.check_runs) if kind == "check" else len(github.comments_on(pull))
    assert made == 1

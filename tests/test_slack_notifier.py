"""The Slack sender (controller.backends.notify.slack) against a local server speaking Slack's Web API.

Pins down: one parent message per model-version rollout, edited in place with
``chat.update`` and kept across restarts, and one thread reply per event;
the Block Kit layout (metrics against production, links, the Approve and
Reject buttons and who may press them); delivery through the outbox, where a
429 pauses every Slack message until its ``Retry-After`` is up and an outage
delays messages and loses none (Invariant 5); which API errors are permanent; and ephemeral replies
going only to Slack's own ``response_url`` host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller.backends.notify import RolloutEvent
from controller.backends.notify.slack import APPROVE_ACTION, REJECT_ACTION, SlackSender
from controller.backends.store import OutboxMessage, open_store
from controller.backends.store.sql import SqlStore
from controller.backends.store.sql.tables import outbox
from controller.clock import SYSTEM_CLOCK
from controller.engine.notices import queue_event
from controller.engine.outbox import DeliveryError, deliver_due
from controller.specs import Model, load_tree
from tests.fakes.slack_api import TOKEN, FakeSlack, Posted

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PR = "https://github.com/acme/ml/pull/42"
METRICS = {"roc_auc": 0.991, "brier": 0.031, "recall": 0.95}
BASELINE = {"roc_auc": 0.987, "brier": 0.035}


@pytest.fixture(scope="module")
def model() -> Model:
    return load_tree(REPO).models["breast-cancer"]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def sender(store: SqlStore, slack: FakeSlack) -> SlackSender:
    return SlackSender(token=TOKEN, store=store, base_url=slack.api_url, timeout=2)


def event(
    kind: str, minute: int, *, environment: str = "production", step: int | None = None, **detail: Any
) -> RolloutEvent:
    return RolloutEvent(
        kind=kind,  # type: ignore[arg-type]
        model="breast-cancer",
        version=3,
        environment=environment,
        message=f"breast-cancer v3 {kind.replace('_', ' ')}",
        at=T0 + timedelta(minutes=minute),
        detail=detail,
        step=step,
    )


AWAITING = event(
    "awaiting_approval",
    3,
    rule="production-signoff",
    groups=["business-owners"],
    may_approve="a member of business-owners",
    missing=1,
    approvers=[],
)
JOURNEY = [
    event(
        "rollout_started",
        0,
        environment="staging",
        commit="a" * 40,
        pull_request=PR,
        report=".flywheel/reports/breast-cancer-v3.md",
    ),
    event("promoted", 1, environment="staging"),
    event(
        "step_reached",
        2,
        step=0,
        weight=10,
        stage="production",
        metrics=METRICS,
        baseline=BASELINE,
        baseline_version=2,
    ),
    AWAITING,
    event("approved", 4, approvers=["carol"]),
    event("promoted", 5),
]


def deliver(store: SqlStore, sender: SlackSender, *, now: datetime | None = None) -> int:
    stats = deliver_due(store, {"slack": sender}, now=now or datetime.now(UTC))
    return stats.sent


def the_parent(slack: FakeSlack) -> Posted:
    parents = slack.parents()
    assert len(parents) == 1, parents
    return parents[0]


def text_of(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks)


def slack_messages(store: SqlStore) -> list[OutboxMessage]:
    """Every Slack message still to deliver (due or not), in the order queued."""
    pending = select(outbox.c.id).where(
        outbox.c.destination == "slack", outbox.c.sent_at.is_(None), outbox.c.next_attempt_at.is_not(None)
    )
    with store.engine.connect() as conn:
        ids = list(conn.execute(pending.order_by(outbox.c.id)).scalars())
    return [store.get_message(i) for i in ids]


# --------------------------------------------------------------- messages


def test_one_parent_per_rollout_edited_in_place_and_a_thread_reply_per_event(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    for step in JOURNEY:
        queue_event(store, model, step)
        assert deliver(store, sender) == 1
    parent = the_parent(slack)
    assert parent.channel == "C0RELEASES"
    assert parent.edits == len(JOURNEY) - 1
    replies = slack.replies(parent)
    assert len(replies) == len(JOURNEY)
    assert [r.text.split(" — ")[0] for r in replies][-1] == ":tada: promoted"
    assert all(call.args["channel"] == "C0RELEASES" for call in slack.api_calls("chat.update"))
    shown = text_of(parent.blocks)
    assert parent.blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "breast-cancer v3"}}
    assert "promoted" in parent.text and "*Approved by:* carol" in shown
    assert APPROVE_ACTION not in shown  # the buttons went away once approved
    assert slack_messages(store) == []  # all sent


def test_parent_shows_stage_weight_metrics_against_production_and_links(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    for step in JOURNEY[:3]:
        queue_event(store, model, step)
    assert deliver(store, sender) == 3
    parent = the_parent(slack)
    fields = next(b["fields"] for b in parent.blocks if "fields" in b)
    assert fields[0]["text"] == "*roc_auc*\n0.991  (prod v2: 0.987, +0.004)"
    assert fields[1]["text"] == "*brier*\n0.031  (prod v2: 0.035, -0.004)"
    assert fields[2]["text"] == "*recall*\n0.95  (no baseline)"
    shown = text_of(parent.blocks)
    assert "*Stage:* production" in shown and "*Canary:* 10%" in shown
    assert f"<{PR}|Pull request>" in shown
    assert "Review report: `.flywheel/reports/breast-cancer-v3.md`" in shown
    assert parent.text == "breast-cancer v3 in production at 10%: step reached"


def test_awaiting_approval_carries_buttons_with_the_version_and_says_who_may_press_them(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[2])
    queue_event(store, model, AWAITING)
    assert deliver(store, sender) == 2
    parent = the_parent(slack)
    actions = next(b for b in parent.blocks if b["type"] == "actions")
    buttons = {e["action_id"]: e for e in actions["elements"]}
    assert set(buttons) == {APPROVE_ACTION, REJECT_ACTION}
    for button in buttons.values():
        assert json.loads(button["value"]) == {
            "model": "breast-cancer",
            "version": 3,
            "environment": "production",
        }
    assert buttons[APPROVE_ACTION]["style"] == "primary" and buttons[REJECT_ACTION]["style"] == "danger"
    shown = text_of(parent.blocks)
    assert "Approval needed for production*" in shown and "(1 more needed)" in shown
    assert "Who may approve: a member of business-owners." in shown
    reply = slack.replies(parent)[-1]
    assert "Who may approve: a member of business-owners" in text_of(reply.blocks)


def test_a_restarted_sender_keeps_editing_the_same_message(
    tmp_path: Path, slack: FakeSlack, model: Model
) -> None:
    first = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    queue_event(first, model, JOURNEY[0])
    assert deliver(first, SlackSender(token=TOKEN, store=first, base_url=slack.api_url)) == 1
    first.close()
    again = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    try:
        queue_event(again, model, JOURNEY[1])
        assert deliver(again, SlackSender(token=TOKEN, store=again, base_url=slack.api_url)) == 1
    finally:
        again.close()
    parent = the_parent(slack)
    assert parent.edits == 1 and len(slack.replies(parent)) == 2


def test_an_event_sent_again_after_a_crash_is_not_replied_twice(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[0])
    message = slack_messages(store)[0]
    sender.send(message)
    sender.send(message)  # the crash came before the outbox marked it sent
    assert len(slack.replies(the_parent(slack))) == 1


def test_an_older_event_delivered_late_does_not_undo_a_newer_one(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[2])
    queue_event(store, model, JOURNEY[1])  # staging's promotion, a minute earlier
    assert deliver(store, sender) == 2
    assert "*Stage:* production" in text_of(the_parent(slack).blocks)


def test_a_deleted_parent_is_posted_again(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[0])
    deliver(store, sender)
    slack.messages.clear()  # someone deleted the message (and its thread)
    queue_event(store, model, JOURNEY[1])
    assert deliver(store, sender) == 1
    parent = the_parent(slack)
    assert parent.edits == 0 and len(slack.replies(parent)) == 1


def test_a_decision_from_slack_shows_who_approved(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, AWAITING)
    deliver(store, sender)
    store.enqueue(
        destination="slack",
        key="slack:decision:breast-cancer:v3:production:carol:approve",
        payload={
            "kind": "decision",
            "model": "breast-cancer",
            "version": 3,
            "environment": "production",
            "user": "carol",
            "decision": "approve",
            "message": "carol approved breast-cancer v3.",
            "channel": None,
            "ts": None,
        },
    )
    assert deliver(store, sender) == 1
    parent = the_parent(slack)
    assert "*Approved by:* carol" in text_of(parent.blocks)
    assert "carol approved breast-cancer v3. (from Slack)" in slack.replies(parent)[-1].text


# --------------------------------------------------------------- failures


def test_429_pauses_everything_for_slack_until_retry_after_and_loses_nothing(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    for step in JOURNEY[:3]:
        queue_event(store, model, step)
    slack.fail(429, "ratelimited", retry_after=30)
    now = datetime.now(UTC)
    stats = deliver_due(store, {"slack": sender}, now=now)
    assert (stats.sent, stats.failed) == (0, 1) and "slack" in stats.deferred and stats.paused == {"slack"}
    waiting = [m for m in slack_messages(store) if m.attempts]
    assert len(waiting) == 1 and waiting[0].next_attempt_at == now + timedelta(seconds=30)
    asked = len(slack.calls)
    assert deliver(store, sender, now=now + timedelta(seconds=10)) == 0  # the others wait too
    assert deliver(store, sender, now=now + timedelta(seconds=29)) == 0
    assert len(slack.calls) == asked  # nothing reached Slack before Retry-After was up
    assert deliver(store, sender, now=now + timedelta(seconds=30)) == 3
    parent = the_parent(slack)
    replies = [r.text for r in slack.replies(parent)]
    assert [text.endswith(step.message) for text, step in zip(replies, JOURNEY, strict=False)] == [True] * 3
    assert len(replies) == 3 and slack_messages(store) == []  # in the order queued


def test_an_outage_delays_messages_and_loses_none(
    store: SqlStore, sender: SlackSender, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[0])
    assert deliver(store, sender) == 1
    slack.stop()
    for step in JOURNEY[1:]:
        queue_event(store, model, step)
    now = datetime.now(UTC)
    for minutes in range(3):  # several passes while Slack is down
        stats = deliver_due(store, {"slack": sender}, now=now + timedelta(minutes=minutes * 10))
        assert stats.sent == 0
    assert len(slack_messages(store)) == len(JOURNEY) - 1
    slack.start()  # the same port again
    later = now + timedelta(hours=1)
    while deliver(store, sender, now=later):
        later += timedelta(minutes=10)
    assert slack_messages(store) == []
    parent = the_parent(slack)
    assert len(slack.replies(parent)) == len(JOURNEY)
    assert "*Approved by:* carol" in text_of(parent.blocks)


@pytest.mark.parametrize(
    ("status", "error", "permanent"),
    [
        (200, "channel_not_found", True),
        (200, "not_in_channel", True),
        (200, "invalid_auth", True),
        (200, "ratelimited", False),
        (503, "service_unavailable", False),
        (500, "internal_error", False),
    ],
)
def test_api_errors_are_permanent_or_retried(
    store: SqlStore,
    sender: SlackSender,
    slack: FakeSlack,
    model: Model,
    status: int,
    error: str,
    permanent: bool,
) -> None:
    queue_event(store, model, JOURNEY[0])
    slack.fail(status, error)
    with pytest.raises(DeliveryError) as raised:
        sender.send(slack_messages(store)[0])
    assert raised.value.permanent is permanent and error in str(raised.value)


def test_an_unknown_channel_or_a_bad_token_gives_up_through_the_outbox(
    store: SqlStore, slack: FakeSlack, model: Model
) -> None:
    queue_event(store, model, JOURNEY[0])
    bad_token = SlackSender(token="xoxb-revoked", store=store, base_url=slack.api_url)
    stats = deliver_due(store, {"slack": bad_token}, now=SYSTEM_CLOCK.now())
    assert stats.gave_up == 1 and slack_messages(store) == []
    assert slack.parents() == []


# -------------------------------------------------------------- ephemeral


def ephemeral(store: SqlStore, url: str) -> OutboxMessage:
    return store.enqueue(
        destination="slack",
        key=f"slack:ephemeral:{url}",
        payload={"kind": "ephemeral", "response_url": url, "text": "not recorded: you wrote it"},
    )


def test_ephemeral_reply_is_posted_to_the_response_url(
    store: SqlStore, sender: SlackSender, slack: FakeSlack
) -> None:
    ephemeral(store, slack.response_url())
    assert deliver(store, sender) == 1
    [call] = slack.api_calls("response_url")
    assert call.args == {
        "text": "not recorded: you wrote it",
        "response_type": "ephemeral",
        "replace_original": False,
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/actions/T0/1/x",
        "http://hooks.slack.com/actions/T0/1/x",
        "https://hooks.slack.com.evil.example/actions/T0/1/x",
        "https://hooks.slack.com:8443/actions/T0/1/x",
        "http://169.254.169.254/latest/meta-data",
        "",
    ],
)
def test_ephemeral_reply_goes_nowhere_but_slack(store: SqlStore, sender: SlackSender, url: str) -> None:
    message = ephemeral(store, url)
    with pytest.raises(DeliveryError) as raised:
        sender.send(message)
    assert raised.value.permanent


def test_expired_response_url_gives_up_and_429_waits(
    store: SqlStore, sender: SlackSender, slack: FakeSlack
) -> None:
    message = ephemeral(store, slack.response_url())
    slack.fail(429, "rate limited", retry_after=5)
    with pytest.raises(DeliveryError) as waiting:
        sender.send(message)
    assert waiting.value.retry_after == 5 and not waiting.value.permanent
    slack.fail(404, "expired_url")
    with pytest.raises(DeliveryError) as gone:
        sender.send(message)
    assert gone.value.permanent

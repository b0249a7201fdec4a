"""The Slack buttons: verified and queued by the webhook service (webhooks.slack), decided by the engine.

Pins down Invariant 3 for Slack — forged signatures, stale timestamps and
replays change nothing (no inbox event, approval, outbox message or audit
entry) — and that a press is only acknowledged at the door (200
``accepted``, nothing decided: Slack wants its answer within three seconds)
and decided from the inbox (controller.engine.slack_actions) with the same
approval check as every other channel: an unmapped or unauthorized Slack
user is refused, audited and told why in an ephemeral reply; an authorized
one is recorded exactly once, even when Slack retries the request or the
button is clicked twice, and the rollout's message then shows who approved.
Also: the route exists only when a signing secret is configured, the
settings, the size limit, and payloads that are not ours; a malformed,
deeply nested or out-of-range payload (a version the store cannot hold, a
user id that is not exactly one) or a 400-digit timestamp is a 4xx that
changes nothing; a press that no longer fits when it is handled is recorded
as failed and decides nothing. Payloads have the shape of Slack's real
``block_actions`` requests.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier
from starlette.testclient import TestClient

from controller.backends.notify import RolloutEvent
from controller.backends.notify.buttons import SLACK_ACTION_KIND
from controller.backends.notify.slack import APPROVE_ACTION, REJECT_ACTION, SlackSender, decision_value
from controller.backends.store import OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.inbox import InboxDispatcher
from controller.engine.notices import queue_event
from controller.engine.outbox import deliver_due
from controller.engine.slack_actions import SlackActions
from controller.settings import ENV_SECRET, ENV_SLACK_SIGNING_SECRET, SettingsError, WebhookSettings
from controller.specs import Catalog, Identity, load_tree
from tests.fakes.slack_api import TOKEN, FakeSlack
from webhooks.app import GITHUB_HOOK_PATH, SLACK_ACTIONS_PATH, create_app
from webhooks.github import sign

REPO = Path(__file__).resolve().parents[1]
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # Slack's documentation example
CAROL, DAVE, ALICE, NOBODY = "U0CAROL01", "U0DAVE002", "U0ALICE01", "U0NOBODY9"
MODEL = "breast-cancer"
HOOKS = "https://hooks.slack.com/actions/T0TEAM/1234/abcd"


@pytest.fixture(scope="module")
def catalog_with_alice() -> Catalog:
    """The repository's example tree, with alice (an ML engineer, not a business owner) on Slack too."""
    loaded = load_tree(REPO)
    policy = loaded.policies["default"]
    identities = (*policy.identities, Identity(user="alice", slack=ALICE))
    policies = {**loaded.policies, "default": dataclasses.replace(policy, identities=identities)}
    return dataclasses.replace(loaded, policies=policies)


@pytest.fixture
def version(store: SqlStore) -> int:
    """breast-cancer's version 1, by alice, at the production approval gate."""
    run = store.create_run(
        model=MODEL, ref="refs/heads/main", commit="c" * 40, cache_key="k1", status="succeeded"
    )
    registered = store.register_version(
        model=MODEL,
        run_id=run.id,
        commit="c" * 40,
        artifact_digest="sha256:" + "0" * 64,
        artifact_uri="/tmp/artifact",
        environment_hash="e" * 16,
        metrics={"roc_auc": 0.99},
    )
    store.create_rollout(
        model=MODEL,
        version=registered.number,
        stages=["staging", "production"],
        state="gate",
        detail={"author": "alice"},
    )
    return registered.number


@pytest.fixture
def commands(store: SqlStore, catalog_with_alice: Catalog) -> Commands:
    return Commands(store=store, catalog=lambda: catalog_with_alice, clock=SYSTEM_CLOCK)


@pytest.fixture
def client(store: SqlStore) -> Iterator[TestClient]:
    settings = WebhookSettings(github_secrets=("github secret",), slack_signing_secret=SECRET)
    with TestClient(create_app(settings, store, clock=SYSTEM_CLOCK)) as test_client:
        yield test_client


def decide(store: SqlStore, commands: Commands) -> None:
    """Run the controller's inbox consumer over what the service queued: the presses are decided now."""
    actions = SlackActions(commands=commands, outbox=store, inbox=store, transactions=store)
    InboxDispatcher(store, {SLACK_ACTION_KIND: actions}).handle_due()


def block_actions(
    user: str, *, action: str = APPROVE_ACTION, version: int = 1, response_url: str = HOOKS, **value: Any
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it when a button of our message is clicked."""
    button_value = value.get("raw") or decision_value(model=MODEL, version=version, environment="production")
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0TEAM"},
        "api_app_id": "A0FLYWHEEL",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": "1700000000.000001",
            "channel_id": "C0RELEASES",
            "is_ephemeral": False,
        },
        "trigger_id": "7000000000.1234567890.abcdef",
        "team": {"id": "T0TEAM", "domain": "acme"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": "C0RELEASES", "name": "ml-releases"},
        "message": {"type": "message", "ts": "1700000000.000001", "text": "breast-cancer v1", "blocks": []},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action,
                "block_id": "flywheel_decision",
                "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                "value": button_value,
                "style": "primary",
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def form(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def press(client: TestClient, payload: dict[str, Any], **headers: str) -> tuple[int, str]:
    body = form(payload)
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers={**signed(body), **headers})
    return response.status_code, response.json()["status"]


def outbox(store: SqlStore) -> list[OutboxMessage]:
    return store.due_messages(now=datetime.now(UTC) + timedelta(days=1))


def approvals(store: SqlStore, version: int = 1) -> list[tuple[str, str, str]]:
    found = store.approvals_for(model=MODEL, version=version, environment="production")
    return [(a.user, a.decision, a.channel) for a in found]


def nothing_changed(store: SqlStore) -> bool:
    """No approval, message or audit entry, and nothing queued that could make one."""
    queued = store.claim_events(limit=10, worker="check", lease_seconds=0)
    return approvals(store) == [] and outbox(store) == [] and store.audit() == [] and queued == []


# ------------------------------------------------------------- allowed


@pytest.mark.unit
def test_an_authorized_approval_is_recorded_and_queues_the_message_update(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    assert press(client, block_actions(CAROL)) == (200, "accepted")
    assert approvals(store) == [] and outbox(store) == []  # acknowledged at once, decided from the inbox
    decide(store, commands)
    assert approvals(store) == [("carol", "approve", "slack")]
    [entry] = store.audit()
    assert (entry.actor, entry.action, entry.detail["as"]) == ("carol", "approval.approve", CAROL)
    [message] = outbox(store)
    assert message.destination == "slack"
    assert message.payload["kind"] == "decision" and message.payload["user"] == "carol"
    assert (message.payload["channel"], message.payload["ts"]) == ("C0RELEASES", "1700000000.000001")


@pytest.mark.unit
def test_slack_retries_and_double_clicks_record_one_approval(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    payload = block_actions(CAROL)
    body = form(payload)
    headers = signed(body)
    assert client.post(SLACK_ACTIONS_PATH, content=body, headers=headers).json()["status"] == "accepted"
    retried = {**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    again = client.post(SLACK_ACTIONS_PATH, content=body, headers=retried)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")  # dropped at the door
    decide(store, commands)
    # Slack re-signs a later retry with a new timestamp; a second click is a new request. Both are
    # new to the door, and decided as the decision already recorded.
    resigned = {**signed(body, at=time.time() + 1), "X-Slack-Retry-Num": "2"}
    assert client.post(SLACK_ACTIONS_PATH, content=body, headers=resigned).json()["status"] == "accepted"
    assert press(client, block_actions(CAROL)) == (200, "accepted")
    decide(store, commands)
    assert approvals(store) == [("carol", "approve", "slack")]
    assert [m.payload["kind"] for m in outbox(store)] == ["decision"]
    assert [e.action for e in store.audit()] == ["approval.approve"]
    assert store.claim_events(limit=10, worker="check") == []  # every press handled, none failed


@pytest.mark.unit
def test_a_reject_is_recorded_as_a_rejection(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    assert press(client, block_actions(DAVE, action=REJECT_ACTION)) == (200, "accepted")
    decide(store, commands)
    assert approvals(store) == [("dave", "reject", "slack")]
    assert outbox(store)[0].payload["decision"] == "reject"


# ------------------------------------------------------------- refused


def set_author(store: SqlStore, author: str) -> None:
    rollout = store.rollouts_for(MODEL)[0]
    store.update_rollout(rollout.id, expected_revision=rollout.revision, detail={"author": author})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("user", "author", "refusal", "why"),
    [
        (NOBODY, "alice", "unmapped", f"{NOBODY} is not a known Flywheel user on slack"),
        # an ML engineer, not the author; production needs a business owner
        (ALICE, "bob", "not_in_groups", "business-owners"),
        # carol's own change (the author is her GitHub login)
        (CAROL, "carol-biz", "author", "carol made this change"),
    ],
)
def test_an_unmapped_or_unauthorized_user_is_refused_audited_and_told_why(
    client: TestClient,
    store: SqlStore,
    version: int,
    commands: Commands,
    user: str,
    author: str,
    refusal: str,
    why: str,
) -> None:
    set_author(store, author)
    assert press(client, block_actions(user)) == (200, "accepted")
    assert store.audit() == [] and outbox(store) == []  # nothing decided at the door
    decide(store, commands)
    assert approvals(store) == []
    [entry] = store.audit()
    assert entry.action == "command.refused" and entry.detail["refusal"] == refusal
    assert entry.detail["as"] == user and entry.detail["channel"] == "slack"
    [message] = outbox(store)
    assert message.payload["kind"] == "ephemeral" and message.payload["response_url"] == HOOKS
    assert str(message.payload["text"]).startswith("Your approve of breast-cancer v1 was not recorded: ")
    assert why in str(message.payload["text"])


@pytest.mark.unit
def test_a_refused_request_replayed_is_audited_once(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    body = form(block_actions(NOBODY))
    headers = signed(body)
    answers = [client.post(SLACK_ACTIONS_PATH, content=body, headers=headers) for _ in range(3)]
    assert [(a.status_code, a.json()["status"]) for a in answers] == [
        (200, "accepted"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    decide(store, commands)
    decide(store, commands)
    assert len(store.audit()) == 1 and len(outbox(store)) == 1


@pytest.mark.unit
def test_a_press_is_decided_and_completed_in_one_go(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    """A controller that stops after deciding, before the dispatcher completes the event, decides no more."""
    assert press(client, block_actions(NOBODY)) == (200, "accepted")
    (event,) = store.claim_events(limit=10, worker="controller", lease_seconds=0)
    SlackActions(commands=commands, outbox=store, inbox=store, transactions=store)(event)
    decide(store, commands)  # what a restarted controller does: the press is not claimed again
    assert store.get_event(event.id).completed_at is not None
    assert len(store.audit()) == 1 and len(outbox(store)) == 1


@pytest.mark.unit
def test_a_press_that_no_longer_fits_fails_and_decides_nothing(
    store: SqlStore, version: int, commands: Commands
) -> None:
    press_payload = {"user_id": CAROL, "decision": "approve", "model": MODEL, "version": 2**31}
    store.put_event(source="slack", delivery_id="old", kind=SLACK_ACTION_KIND, payload=press_payload)
    decide(store, commands)
    failed = store.get_event(1)
    assert failed.completed_at is not None and "version: Input should be less than or equal to" in (
        failed.error or ""
    )
    assert approvals(store) == [] and outbox(store) == [] and store.audit() == []


@pytest.mark.unit
def test_a_version_without_a_rollout_is_refused(
    client: TestClient, store: SqlStore, version: int, commands: Commands
) -> None:
    assert press(client, block_actions(CAROL, version=7)) == (200, "accepted")
    decide(store, commands)
    assert approvals(store, 7) == [] and store.audit()[0].detail["refusal"] == "no_rollout"


# ------------------------------------------------------------- forged


def _forgeries() -> dict[str, tuple[bytes, dict[str, str]]]:
    body = form(block_actions(CAROL))
    good = signed(body)
    flipped = bytearray(body)
    flipped[-3] ^= 0x01
    now = time.time()
    return {
        "wrong secret": (body, signed(body, secret="guess")),
        "flipped body byte": (bytes(flipped), good),
        "no signature": (body, {k: v for k, v in good.items() if k != "X-Slack-Signature"}),
        "no timestamp": (body, {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"}),
        "unsigned": (body, {"Content-Type": "application/x-www-form-urlencoded"}),
        "stale timestamp": (body, signed(body, at=now - 301)),
        "timestamp from the future": (body, signed(body, at=now + 301)),
        "timestamp moved": (body, {**good, "X-Slack-Request-Timestamp": str(int(now) - 1)}),
        "timestamp not a number": (body, {**good, "X-Slack-Request-Timestamp": "soon"}),
        "v1 signature": (body, {**good, "X-Slack-Signature": "v1=" + good["X-Slack-Signature"][3:]}),
        "github signature": (body, {**good, "X-Slack-Signature": sign(body, SECRET)}),
    }


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(_forgeries()))
def test_forged_stale_or_unsigned_requests_are_401_and_change_nothing(
    client: TestClient, store: SqlStore, version: int, case: str
) -> None:
    body, headers = _forgeries()[case]
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers=headers)
    assert response.status_code == 401 and response.json()["status"] == "bad_signature"
    assert nothing_changed(store)


@pytest.mark.unit
def test_an_oversized_body_is_413_and_changes_nothing(
    client: TestClient, store: SqlStore, version: int
) -> None:
    body = form({**block_actions(CAROL), "padding": "x" * (1024 * 1024)})
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers=signed(body))
    assert response.status_code == 413 and nothing_changed(store)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"type": "view_submission", "user": {"id": CAROL}}, (200, "ignored")),
        (
            {**block_actions(CAROL), "actions": [{"action_id": "someone_else", "value": "x"}]},
            (200, "ignored"),
        ),
        (block_actions(CAROL, raw="not json"), (400, "bad_request")),
        (block_actions(CAROL, raw=json.dumps({"model": MODEL})), (400, "bad_request")),
        ({**block_actions(CAROL), "user": {}}, (400, "bad_request")),
    ],
)
def test_payloads_that_are_not_a_flywheel_decision_change_nothing(
    client: TestClient, store: SqlStore, version: int, payload: dict[str, Any], status: tuple[int, str]
) -> None:
    assert press(client, payload) == status
    assert nothing_changed(store)


@pytest.mark.unit
def test_a_400_digit_timestamp_is_401_and_changes_nothing(
    client: TestClient, store: SqlStore, version: int
) -> None:
    body = form(block_actions(CAROL))
    headers = {**signed(body), "X-Slack-Request-Timestamp": "9" * 400}
    headers["X-Slack-Signature"] = (
        SignatureVerifier(SECRET).generate_signature(timestamp="9" * 400, body=body) or ""
    )
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers=headers)
    assert (response.status_code, response.json()["status"]) == (401, "bad_signature")
    assert nothing_changed(store)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("[" * 50_000 + "]" * 50_000, "recursion limit exceeded"),
        ('{"type": "block_actions", "x": ' + "[" * 1000 + "]" * 1000 + "}", "recursion limit exceeded"),
        (json.dumps(block_actions(CAROL, version=2**63)), "version: Input should be less than or equal to"),
        (json.dumps(block_actions(CAROL, version=2**31)), "version: Input should be less than or equal to"),
        (json.dumps(block_actions(CAROL, version=0)), "version: Input should be greater than or equal to 1"),
        (json.dumps(block_actions(CAROL, raw=json.dumps({"model": MODEL, "version": True}))), "version"),
        (json.dumps(block_actions(CAROL, raw=json.dumps({"model": MODEL, "version": 1.0}))), "version"),
        (json.dumps(block_actions(CAROL, raw=json.dumps({"model": MODEL, "version": "1"}))), "version"),
        (json.dumps(block_actions(CAROL + " ")), "user.id"),
        (json.dumps({**block_actions(CAROL), "user": {"id": 7}}), "user.id"),
        (json.dumps({**block_actions(CAROL), "actions": {"action_id": APPROVE_ACTION}}), "actions"),
    ],
    ids=lambda value: value[:40],
)
def test_a_malformed_or_out_of_range_payload_is_400_and_changes_nothing(
    client: TestClient, store: SqlStore, version: int, payload: str, error: str
) -> None:
    body = urlencode({"payload": payload}).encode()
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers=signed(body))
    assert (response.status_code, response.json()["status"]) == (400, "bad_request")
    assert error in response.json()["error"]
    assert nothing_changed(store) and store.claim_events(limit=10, worker="check") == []


@pytest.mark.unit
def test_a_signed_body_that_is_not_a_form_is_400(client: TestClient, store: SqlStore, version: int) -> None:
    body = json.dumps(block_actions(CAROL)).encode()
    response = client.post(SLACK_ACTIONS_PATH, content=body, headers=signed(body))
    assert response.status_code == 400 and nothing_changed(store)


# ------------------------------------------------------------- mounting and settings


@pytest.mark.unit
def test_without_a_signing_secret_there_is_no_slack_route(store: SqlStore) -> None:
    settings = WebhookSettings(github_secrets=("github secret",))
    with TestClient(create_app(settings, store, clock=SYSTEM_CLOCK)) as test_client:
        body = form(block_actions(CAROL))
        assert test_client.post(SLACK_ACTIONS_PATH, content=body, headers=signed(body)).status_code == 404
        push = b'{"ref": "refs/heads/main"}'
        github = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "d1",
            "X-Hub-Signature-256": sign(push, "github secret"),
        }
        assert test_client.post(GITHUB_HOOK_PATH, content=push, headers=github).status_code == 202


@pytest.mark.unit
def test_a_signing_secret_without_a_clock_fails_at_startup(store: SqlStore) -> None:
    settings = WebhookSettings(github_secrets=("github secret",), slack_signing_secret=SECRET)
    with pytest.raises(SettingsError, match="no clock to judge the age of Slack's requests"):
        create_app(settings, store)


@pytest.mark.unit
def test_settings_read_the_slack_signing_secret_only_when_set() -> None:
    base = {ENV_SECRET: "github secret"}
    assert WebhookSettings.from_env(base).slack_signing_secret is None
    loaded = WebhookSettings.from_env({**base, ENV_SLACK_SIGNING_SECRET: SECRET})
    assert loaded.slack_signing_secret == SECRET and SECRET not in repr(loaded)
    with pytest.raises(SettingsError, match=ENV_SLACK_SIGNING_SECRET):
        WebhookSettings.from_env({**base, ENV_SLACK_SIGNING_SECRET: "  "})


# ------------------------------------------------------------- end to end


@pytest.mark.integration
def test_clicking_the_posted_button_records_the_approval_and_the_message_shows_it(
    client: TestClient, store: SqlStore, version: int, catalog_with_alice: Catalog, commands: Commands
) -> None:
    with FakeSlack() as slack:
        sender = SlackSender(token=TOKEN, store=store, base_url=slack.api_url)
        awaiting = RolloutEvent(
            kind="awaiting_approval",
            model=MODEL,
            version=version,
            environment="production",
            message="waiting for a business owner",
            at=datetime.now(UTC),
            detail={"may_approve": "a member of business-owners", "missing": 1},
        )
        queue_event(store, catalog_with_alice.models[MODEL], awaiting)
        deliver_due(store, {"slack": sender}, now=SYSTEM_CLOCK.now())
        [parent] = slack.parents()
        button = next(b for b in parent.blocks if b["type"] == "actions")["elements"][0]
        payload = block_actions(CAROL, raw=button["value"], response_url=slack.response_url())
        payload["container"] = {"type": "message", "message_ts": parent.ts, "channel_id": parent.channel}
        assert press(client, payload) == (200, "accepted")
        refused = block_actions(NOBODY, raw=button["value"], response_url=slack.response_url())
        assert press(client, refused) == (200, "accepted")
        assert deliver_due(store, {"slack": sender}, now=SYSTEM_CLOCK.now()).sent == 0  # not decided yet
        decide(store, commands)
        assert deliver_due(store, {"slack": sender}, now=SYSTEM_CLOCK.now()).sent == 2
        assert "*Approved by:* carol" in json.dumps(slack.parents()[0].blocks)
        [reply] = slack.api_calls("response_url")
        assert (
            reply.args["response_type"] == "ephemeral" and "not a known Flywheel user" in reply.args["text"]
        )
    assert approvals(store) == [("carol", "approve", "slack")]

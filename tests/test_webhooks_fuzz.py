"""Fuzzing the GitHub and Slack receivers with random, mutated and forged requests.

Pins down that no request, however malformed — random bytes, truncated or
mutated real payloads, wrong types at the fields Flywheel reads, huge
numbers, deep nesting, unicode, JSON or form bodies, random header values
(a 400-digit Slack timestamp among them), signed or not — makes a receiver
answer 5xx (the store here never fails); that no request without a valid
signature changes the store (Invariant 3); that a GitHub delivery is stored
only when it is accepted, and every stored one is then handled without
raising or leaving a record that does not read back; and that a Slack request
answered 4xx, 200 ``ignored`` or 200 ``duplicate`` changes nothing: no inbox
row, approval, audit entry or outbox message, while one answered 200
``accepted`` adds its inbox row and nothing else (the press is decided from
the inbox, later), and every press queued is then decided without an error.
Hypothesis drives the cases with a fixed seed (``derandomize``) so a failure
reproduces.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from controller.backends.forge.github import GitHubForge
from controller.backends.notify.buttons import SLACK_ACTION_KIND
from controller.backends.notify.slack import APPROVE_ACTION, REJECT_ACTION, decision_value
from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.github_events import GITHUB_EVENT_KINDS, GitHubEvents
from controller.engine.inbox import InboxDispatcher
from controller.engine.slack_actions import SlackActions
from controller.settings import WebhookSettings
from controller.specs import load_tree
from tests.fixtures.required import REFERENCE_ROOT, missing, required
from webhooks.app import GITHUB_HOOK_PATH, SLACK_ACTIONS_PATH, create_app
from webhooks.github import sign, verify_signature

pytestmark = pytest.mark.integration  # long fuzzers, in process: kept out of the fast unit tier
SECRET = "fuzz secret"
LIMIT = 64 * 1024
REFERENCE = REFERENCE_ROOT / "github-webhooks"


def _seed_bodies() -> list[bytes]:
    names = ["pull_request.opened.payload.json", "push.payload.json", "issue_comment.created.payload.json"]
    found = [(REFERENCE / name).read_bytes() for name in names if (REFERENCE / name).is_file()]
    if len(found) < len(names) and required():
        missing(f"reference data {REFERENCE}")  # fails collection; without the variable, seeds of our own
    return found or [
        json.dumps({"action": "opened", "number": 1, "pull_request": {"head": {"sha": "a" * 40}}}).encode(),
        json.dumps({"ref": "refs/heads/main", "after": "b" * 40, "commits": []}).encode(),
    ]


SEEDS = _seed_bodies()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(SEEDS)))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "intact"]))
    if how == "truncate":
        del body[draw(st.integers(0, len(body) - 1)) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            body[draw(st.integers(0, len(body) - 1))] ^= draw(st.integers(1, 255))
    elif how == "insert":
        at = draw(st.integers(0, len(body)))
        body[at:at] = draw(st.binary(min_size=1, max_size=50))
    elif how == "delete":
        at = draw(st.integers(0, len(body) - 1))
        del body[at : at + draw(st.integers(1, 200))]
    return bytes(body)


@st.composite
def retyped_object(draw: st.DrawFn) -> bytes:
    payload: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
    if draw(st.booleans()):
        payload["action"] = draw(json_values | st.sampled_from(["opened", "synchronize", "created"]))
    return json.dumps(payload, ensure_ascii=draw(st.booleans())).encode()


READ_FIELDS = [
    "action",
    "number",
    "pull_request",
    "pull_request.number",
    "pull_request.state",
    "pull_request.merged",
    "pull_request.merged_at",
    "pull_request.head",
    "pull_request.head.sha",
    "pull_request.head.repo",
    "pull_request.head.repo.id",
    "pull_request.base.repo",
    "pull_request.user.login",
    "ref",
    "deleted",
    "issue.number",
    "issue.pull_request",
    "comment.id",
    "comment.body",
    "comment.user",
    "comment.user.type",
    "sender.login",
    "repository.full_name",
]


@st.composite
def retyped_read_field(draw: st.DrawFn) -> bytes:
    """A real payload with one of the fields Flywheel reads removed or set to any JSON value."""
    payload = json.loads(draw(st.sampled_from(SEEDS)))
    *parents, last = draw(st.sampled_from(READ_FIELDS)).split(".")
    node: Any = payload
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        if draw(st.booleans()):
            node.pop(last, None)
        else:
            node[last] = draw(json_values)
    return json.dumps(payload).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    mutated_seed(),
    retyped_object(),
    retyped_read_field(),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        [
            b"",
            b"null",
            b'{"x": NaN}',
            b'{"x": -Infinity}',
            b'{"x": 1e400}',
            b'{"x": ' + b"7" * 10_000 + b"}",
            b"[" * 50_000,
            b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
            b'{"s": "\\ud800"}',
            b'{"s": "\\u0000"}',
            '{"s": "\U0001f525 ünïcødé"}'.encode(),
            b"\xef\xbb\xbf{}",
            b"x" * (LIMIT + 1),
        ]
    ),
)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)
events = st.sampled_from(["pull_request", "push", "issue_comment", "ping", "check_run", "star"]) | header_text
deliveries = (
    st.builds(lambda u: str(u), st.uuids()) | header_text | st.sampled_from(["fixed-id-1", "fixed-id-2"])
)
signing = st.sampled_from(["valid", "valid", "none", "wrong secret", "garbage", "sha1"])
FORM = "application/x-www-form-urlencoded"
content_types = st.sampled_from(
    [
        None,
        "application/json",
        FORM,
        FORM,
        f"{FORM}; charset=utf-8",
        "text/plain",
        "multipart/form-data",
        ";;",
    ]
)


# Under faketime (CI's second pass, which checks that nothing depends on the calendar) a tenth of the
# examples: the same properties, without fuzzing the same volume twice through a slower libc.
SCALE = 10 if os.environ.get("FAKETIME") else 1


def _rows(state: Path) -> int:
    with sqlite3.connect(state / "state.db") as db:
        return int(db.execute("SELECT count(*) FROM inbox_events").fetchone()[0])


@pytest.mark.timeout(900)  # thousands of requests: seconds on a quiet machine, minutes on a busy one
def test_no_request_gets_5xx_and_unsigned_ones_change_nothing() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = open_store(state, clock=SYSTEM_CLOCK)
        client = TestClient(
            create_app(WebhookSettings(github_secrets=(SECRET,), max_body_bytes=LIMIT), store)
        )
        try:
            with client:
                _fuzz(client, state)
            _handle_everything_stored(store, state)
        finally:
            store.close()


def _fuzz(client: TestClient, state: Path) -> None:
    @settings(
        max_examples=2000 // SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(
        body=bodies,
        event=st.none() | events,
        delivery=st.none() | deliveries,
        how=signing,
        content_type=content_types,
        as_form=st.booleans(),
    )
    def case(
        body: bytes,
        event: str | None,
        delivery: str | None,
        how: str,
        content_type: str | None,
        as_form: bool,
    ) -> None:
        request_headers: dict[str, bytes] = {}
        if content_type is not None:
            request_headers["Content-Type"] = content_type.encode()
            if content_type.startswith(FORM) and as_form:  # GitHub's default: payload=<the JSON>
                body = b"payload=" + quote(body).encode()
        if event is not None:
            request_headers["X-GitHub-Event"] = event.encode("latin-1")
        if delivery is not None:
            request_headers["X-GitHub-Delivery"] = delivery.encode("latin-1")
        if how == "valid":
            request_headers["X-Hub-Signature-256"] = sign(body, SECRET).encode()
        elif how == "wrong secret":
            request_headers["X-Hub-Signature-256"] = sign(body, "not " + SECRET).encode()
        elif how == "garbage":
            request_headers["X-Hub-Signature-256"] = b"sha256=" + uuid.uuid4().hex.encode() * 2
        elif how == "sha1":
            request_headers["X-Hub-Signature-256"] = b"sha1=" + sign(body, SECRET)[7:47].encode()
        before = _rows(state)
        response = client.post(GITHUB_HOOK_PATH, content=body, headers=request_headers)
        assert response.status_code < 500, (response.status_code, response.text)
        signed = verify_signature(
            body, request_headers.get("X-Hub-Signature-256", b"").decode() or None, [SECRET]
        )
        if len(body) > LIMIT:
            assert response.status_code == 413
        elif not signed:
            assert response.status_code == 401
        else:
            assert response.status_code in (200, 202, 400)
        if response.status_code != 202 or response.json()["status"] != "accepted":
            assert _rows(state) == before
        else:
            assert _rows(state) == before + 1

    case()


def _handle_everything_stored(store: SqlStore, state: Path) -> None:
    """Every accepted delivery is handled without raising, and leaves records that read back."""
    catalog = load_tree(Path(__file__).resolve().parents[1])
    commands = Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK)

    def retrain(model: str, ref: str | None) -> int:
        return 1  # a fuzzed comment may well ask for one; training is not what is fuzzed

    handler = GitHubEvents(
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=commands,
        replies=lambda repository: GitHubForge(store, repository),
        retrain=retrain,
    )
    dispatcher = InboxDispatcher(store, dict.fromkeys(GITHUB_EVENT_KINDS, handler))
    for _ in range(20):
        if not _unhandled(state):
            break
        dispatcher.handle_due(limit=500)
    assert _unhandled(state) == 0
    with sqlite3.connect(state / "state.db") as db:
        errors = [row[0] for row in db.execute("SELECT error FROM inbox_events WHERE error IS NOT NULL")]
        recorded = [row[0] for row in db.execute("SELECT number FROM pull_requests")]
    assert errors == []
    for number in recorded:
        pull = store.pull_request(number)
        assert pull is not None and pull.number == number
    for pull in store.open_pull_requests():
        assert pull.state == "open" and store.pull_request(pull.number) == pull


def _failed(state: Path) -> list[str]:
    with sqlite3.connect(state / "state.db") as db:
        return [row[0] for row in db.execute("SELECT error FROM inbox_events WHERE error IS NOT NULL")]


def _unhandled(state: Path) -> int:
    with sqlite3.connect(state / "state.db") as db:
        return int(db.execute("SELECT count(*) FROM inbox_events WHERE completed_at IS NULL").fetchone()[0])


# ------------------------------------------------------------------ Slack

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CAROL = "U0CAROL01"  # a business owner in the example policy
MODEL = "breast-cancer"


def _button(**fields: object) -> str:
    value = json.loads(decision_value(model=MODEL, version=1, environment="production"))
    return json.dumps({**value, **fields})


def _block_actions(user: str = CAROL, value: str | None = None) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "carol", "team_id": "T0TEAM"},
        "api_app_id": "A0FLYWHEEL",
        "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": "C0RELEASES"},
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
        "actions": [
            {
                "action_id": APPROVE_ACTION,
                "block_id": "flywheel_decision",
                "type": "button",
                "value": value or _button(),
            }
        ],
    }


SLACK_FIELDS = [
    "type",
    "user",
    "user.id",
    "actions",
    "actions.0",
    "actions.0.action_id",
    "actions.0.value",
    "response_url",
    "container",
    "container.channel_id",
    "container.message_ts",
]
button_values = st.one_of(
    st.integers(1, 3).map(lambda v: _button(version=v)),  # version 1 waits at the gate; 2, 3 do not exist
    st.integers(1, 3).map(lambda v: _button(version=v)),
    st.integers(1, 3).map(lambda v: _button(version=v)),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda v: _button(version=v)),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 0, -1]).map(lambda v: _button(version=v)),
    json_values.map(lambda v: _button(version=v)),
    json_values.map(lambda v: _button(model=v)),
    json_values.map(lambda v: _button(environment=v)),
    json_values.map(json.dumps),
    st.text(max_size=30),
    st.integers(1, 3000).map(lambda n: '{"model": ' + "[" * n + "]" * n + ', "version": 1}'),
)


@st.composite
def slack_payloads(draw: st.DrawFn) -> str:
    payload = _block_actions(
        user=draw(st.sampled_from([CAROL, "U0NOBODY9", "U0CAROL01 ", "u0carol01", ""])),
        value=draw(button_values),
    )
    payload["actions"][0]["action_id"] = draw(st.sampled_from([APPROVE_ACTION, REJECT_ACTION, "other_app"]))
    if draw(st.integers(0, 2)) == 0:
        *parents, last = draw(st.sampled_from(SLACK_FIELDS)).split(".")
        node: Any = payload
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.get(part)
        if draw(st.booleans()):
            node.pop(int(last) if isinstance(node, list) else last)
        else:
            node[int(last) if isinstance(node, list) else last] = draw(json_values)
    return json.dumps(payload, ensure_ascii=draw(st.booleans()))


slack_bodies = st.one_of(
    slack_payloads().map(lambda text: urlencode({"payload": text}).encode()),
    slack_payloads().map(lambda text: urlencode({"payload": text}).encode()),
    slack_payloads().map(lambda text: urlencode({"payload": text}).encode()),
    slack_payloads().map(str.encode),  # not a form
    st.integers(1, 200_000).map(lambda n: urlencode({"payload": "[" * n + "]" * n}).encode()),
    st.integers(1, 5_000).map(lambda n: urlencode({"payload": '{"a":' * n + "1" + "}" * n}).encode()),
    json_values.map(lambda v: urlencode({"payload": json.dumps(v)}).encode()),
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b"payload=", b"payload=%FF", b"payload=1&payload=2", b"a&&b", b"x" * (1024 * 1024 + 1)]
    ),
)
timestamps = st.one_of(
    st.just("now"),
    st.just("now"),
    st.just("now"),
    st.just("now"),
    st.integers(-(10**6), 10**6).map(lambda delta: str(int(time.time()) + delta)),
    st.integers(1, 500).map(lambda n: "9" * n),
    st.sampled_from(["", "-1", "1e3", "٣", "0x10", " 1700000000", "17000000000000000000000"]),
    header_text,
)
slack_signing = st.sampled_from(["valid"] * 6 + ["none", "wrong secret", "garbage", "v1"])
TABLES = ("inbox_events", "approvals", "audit_log", "outbox")


def _table_rows(state: Path) -> dict[str, int]:
    with sqlite3.connect(state / "state.db") as db:
        return {table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) for table in TABLES}


def _version_at_the_gate(store: SqlStore) -> None:
    run = store.create_run(
        model=MODEL, ref="refs/heads/main", commit="c" * 40, cache_key="k1", status="succeeded"
    )
    version = store.register_version(
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
        version=version.number,
        stages=["staging", "production"],
        state="gate",
        detail={"author": "alice"},
    )


@pytest.mark.timeout(900)  # as above
def test_no_slack_request_gets_5xx_and_malformed_ones_change_nothing() -> None:
    catalog = load_tree(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = open_store(state, clock=SYSTEM_CLOCK)
        try:
            _version_at_the_gate(store)
            settings_ = WebhookSettings(github_secrets=("github",), slack_signing_secret=SLACK_SECRET)
            app = create_app(settings_, store, clock=SYSTEM_CLOCK)
            with TestClient(app) as client:
                _fuzz_slack(client, state)
            commands = Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK)
            actions = SlackActions(commands=commands, outbox=store, inbox=store, transactions=store)
            InboxDispatcher(store, {SLACK_ACTION_KIND: actions}).handle_due(limit=10_000)
            assert _unhandled(state) == 0
            assert _failed(state) == []
        finally:
            store.close()


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fuzz_slack(client: TestClient, state: Path) -> None:
    @settings(
        max_examples=800 // SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(body=slack_bodies, stamp=timestamps, how=slack_signing)
    def case(body: bytes, stamp: str, how: str) -> None:
        timestamp = str(int(time.time())) if stamp == "now" else stamp
        request_headers: dict[str, bytes] = {"Content-Type": b"application/x-www-form-urlencoded"}
        if timestamp:
            request_headers["X-Slack-Request-Timestamp"] = timestamp.encode("utf-8")
        # Slack's verifier takes a request up to 300 s old or ahead; at that edge the test's clock and the
        # endpoint's read a moment apart disagree, so a timestamp within 5 s of it is taken either way.
        digits = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
        age = abs(int(timestamp) - time.time()) if digits else None
        fresh = age is not None and age <= 295
        edge = age is not None and 295 < age < 305
        if how in ("valid", "v1", "wrong secret"):
            secret = SLACK_SECRET if how != "wrong secret" else "not " + SLACK_SECRET
            digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
            version = "v1" if how == "v1" else "v0"
            request_headers["X-Slack-Signature"] = f"{version}={digest.hexdigest()}".encode()
        elif how == "garbage":
            request_headers["X-Slack-Signature"] = b"v0=" + uuid.uuid4().hex.encode() * 2
        before = _table_rows(state)
        response = client.post(SLACK_ACTIONS_PATH, content=body, headers=request_headers)
        assert response.status_code < 500, (response.status_code, response.text)
        status = response.json()["status"]
        if len(body) > 1024 * 1024:
            assert response.status_code == 413
        elif how != "valid" or (not fresh and not edge) or not _utf8(body):  # Slack signs UTF-8 only
            assert (response.status_code, status) == (401, "bad_signature")
        after = _table_rows(state)
        if response.status_code >= 400 or status in ("ignored", "duplicate"):
            assert after == before, (response.status_code, status)
        else:  # the click itself, kept until the controller decides it; nothing decided yet
            assert (response.status_code, status) == (200, "accepted")
            assert after == {**before, "inbox_events": before["inbox_events"] + 1}

    case()

"""The GitHub webhook receiver (webhooks.app): what it stores, what it refuses, and what it answers.

Pins down Invariant 3 at the door — unsigned or wrongly signed deliveries and
replays change nothing — and Invariant 5's first step: a handled delivery is
in the durable inbox before GitHub gets a 2xx, and a store failure answers 503
so that GitHub delivers again. A signed delivery whose payload does not have
the shape Flywheel reads (``"number": false``, a string id, ...) is a 400 that
stores nothing. Both of GitHub's content types work: JSON, and the default
form (``payload=<json>``), verified as sent and stored as its JSON. Also: the
body size limit (413, enforced while streaming), the settings refusing to
start without a secret, secret rotation, ignored events, the health check and
the per-app metrics. Real payloads come
from ../shared/reference/github-webhooks/ (see tests.fixtures.required).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from controller.backends.store.sql import SqlStore
from controller.settings import (
    DEFAULT_MAX_BODY_BYTES,
    ENV_MAX_BODY_BYTES,
    ENV_PREVIOUS_SECRET,
    ENV_SECRET,
    SettingsError,
    WebhookSettings,
)
from tests.fixtures.required import REFERENCE_ROOT
from tests.fixtures.served import served
from webhooks.app import GITHUB_HOOK_PATH, create_app
from webhooks.github import HANDLED_EVENTS, sign, verify_signature

SECRET = "It's a Secret to Everybody"
REFERENCE = REFERENCE_ROOT / "github-webhooks"
needs_reference = pytest.mark.usefixtures("reference_payloads")


def inbox_rows(state: Path) -> list[tuple[str, str, str, str]]:
    """(source, delivery_id, kind, payload) of every inbox row, read straight from the database file."""
    with sqlite3.connect(state / "state.db") as db:
        return list(db.execute("SELECT source, delivery_id, kind, payload FROM inbox_events ORDER BY id"))


def headers(
    body: bytes, *, event: str = "push", delivery: str | None = None, secret: str = SECRET
) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, secret),
        "Content-Type": "application/json",
    }


def event_of(path: Path) -> str:
    return path.name.split(".")[0]


def metric(client: TestClient, event: str, outcome: str) -> float:
    wanted = f'flywheel_webhook_deliveries_total{{event="{event}",outcome="{outcome}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    return 0.0


FORM = "application/x-www-form-urlencoded"
_REPO = {"id": 1, "full_name": "octo/models"}
PULL_REQUEST: dict[str, Any] = {  # the fields of a pull_request delivery that Flywheel reads
    "action": "synchronize",
    "number": 7,
    "pull_request": {
        "number": 7,
        "state": "open",
        "merged": False,
        "merged_at": None,
        "updated_at": "2024-05-01T12:00:00Z",
        "user": {"login": "octocat"},
        "head": {"ref": "tune", "sha": "a" * 40, "repo": _REPO},
        "base": {"ref": "main", "repo": _REPO},
    },
}
PUSH = json.dumps({"ref": "refs/heads/main", "before": "0" * 40, "after": "1" * 40, "commits": []}).encode()


@pytest.fixture
def settings() -> WebhookSettings:
    return WebhookSettings(github_secrets=(SECRET,))


@pytest.fixture
def client(settings: WebhookSettings, store: SqlStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store)) as test_client:
        yield test_client


# ------------------------------------------------------------- accepted


@pytest.mark.unit
@needs_reference
def test_real_payloads_of_handled_events_are_stored_with_their_kind(client: TestClient, state: Path) -> None:
    files = sorted(p for p in REFERENCE.glob("*.json") if event_of(p) in HANDLED_EVENTS)
    assert {event_of(p) for p in files} == HANDLED_EVENTS
    expected = []
    for path in files:
        body = path.read_bytes()
        payload = json.loads(body)
        kind = f"{event_of(path)}.{payload['action']}" if "action" in payload else event_of(path)
        delivery = str(uuid.uuid4())
        response = client.post(
            GITHUB_HOOK_PATH, content=body, headers=headers(body, event=event_of(path), delivery=delivery)
        )
        assert response.status_code == 202, (path.name, response.text)
        assert response.json() == {"status": "accepted", "delivery": delivery, "kind": kind}
        expected.append(("github", delivery, kind, payload))
    rows = inbox_rows(state)
    assert [(s, d, k, json.loads(p)) for s, d, k, p in rows] == expected
    assert {k.split(".")[0] for _, _, k, _ in expected} == HANDLED_EVENTS
    assert "push" in {k for _, _, k, _ in expected} and "ping" in {k for _, _, k, _ in expected}


@pytest.mark.unit
@needs_reference
def test_real_payloads_of_other_events_are_ignored_and_not_stored(client: TestClient, state: Path) -> None:
    files = sorted(p for p in REFERENCE.glob("*.json") if event_of(p) not in HANDLED_EVENTS)
    assert files
    for path in files:
        body = path.read_bytes()
        response = client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, event=event_of(path)))
        assert response.status_code == 202 and response.json()["status"] == "ignored", path.name
    assert inbox_rows(state) == []
    assert metric(client, "other", "ignored") == len(files)


@pytest.mark.unit
def test_a_pull_request_with_the_fields_flywheel_reads_is_accepted(client: TestClient, state: Path) -> None:
    body = json.dumps(PULL_REQUEST).encode()
    response = client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, event="pull_request"))
    assert response.status_code == 202 and response.json()["kind"] == "pull_request.synchronize"
    assert len(inbox_rows(state)) == 1


@pytest.mark.unit
def test_replayed_delivery_is_a_duplicate_and_changes_nothing(client: TestClient, state: Path) -> None:
    delivery = str(uuid.uuid4())
    first = client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery))
    assert first.status_code == 202
    again = client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    other = json.dumps(
        {"ref": "refs/heads/evil"}
    ).encode()  # same id, other (signed) body: still the first one
    assert (
        client.post(GITHUB_HOOK_PATH, content=other, headers=headers(other, delivery=delivery)).status_code
        == 200
    )
    rows = inbox_rows(state)
    assert len(rows) == 1 and json.loads(rows[0][3])["ref"] == "refs/heads/main"
    assert metric(client, "push", "accepted") == 1 and metric(client, "push", "duplicate") == 2


@pytest.mark.unit
def test_rotation_accepts_the_previous_secret_too(store: SqlStore, state: Path) -> None:
    settings = WebhookSettings(github_secrets=("new secret", "old secret"))
    with TestClient(create_app(settings, store)) as client:
        for secret in ("new secret", "old secret"):
            assert (
                client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, secret=secret)).status_code
                == 202
            )
        assert (
            client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, secret=SECRET)).status_code
            == 401
        )
    assert len(inbox_rows(state)) == 2


@pytest.mark.unit
@needs_reference
def test_form_encoded_deliveries_githubs_default_are_stored_as_their_json(
    client: TestClient, state: Path
) -> None:
    files = sorted(p for p in REFERENCE.glob("*.json") if event_of(p) in HANDLED_EVENTS)
    for path in files:
        text = path.read_text()
        body = urlencode({"payload": text}).encode()
        request_headers = {**headers(body, event=event_of(path)), "Content-Type": FORM}
        response = client.post(GITHUB_HOOK_PATH, content=body, headers=request_headers)
        assert (response.status_code, response.json()["status"]) == (202, "accepted"), path.name
    rows = inbox_rows(state)
    assert [json.loads(row[3]) for row in rows] == [json.loads(p.read_bytes()) for p in files]


@pytest.mark.unit
def test_a_form_is_verified_as_sent_then_decoded(client: TestClient, state: Path) -> None:
    body = urlencode({"payload": PUSH.decode()}).encode()
    as_json = {**headers(PUSH), "Content-Type": FORM}  # signed over the JSON inside, not the body
    assert client.post(GITHUB_HOOK_PATH, content=body, headers=as_json).status_code == 401
    with_charset = {**headers(body), "Content-Type": f"{FORM}; charset=utf-8"}
    assert client.post(GITHUB_HOOK_PATH, content=body, headers=with_charset).status_code == 202
    assert client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH)).status_code == 202  # JSON too
    assert [json.loads(row[3]) for row in inbox_rows(state)] == [json.loads(PUSH)] * 2


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"payload=",
        b"other=" + quote(PUSH).encode(),
        b"payload=" + quote(PUSH).encode() + b"&payload=" + quote(PUSH).encode(),
        b"payload=" + quote(PUSH).encode() + b"&x=1",
        b"payload=%7B",
        b"payload=%FF%FE",
        "payload=ü".encode(),
        b"just text",
        PUSH,  # JSON, but announced as a form
    ],
    ids=lambda value: repr(value)[:30],
)
def test_a_malformed_form_is_400_and_stores_nothing(client: TestClient, state: Path, body: bytes) -> None:
    response = client.post(GITHUB_HOOK_PATH, content=body, headers={**headers(body), "Content-Type": FORM})
    assert (response.status_code, response.json()["status"]) == (400, "bad_request"), response.text
    assert inbox_rows(state) == []


# ------------------------------------------------------------- refused


def _forgeries() -> dict[str, tuple[bytes, dict[str, str]]]:
    good = headers(PUSH)
    flipped = bytearray(PUSH)
    flipped[5] ^= 0x01
    missing = {k: v for k, v in good.items() if k != "X-Hub-Signature-256"}
    import hashlib
    import hmac

    sha1 = "sha1=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha1).hexdigest()
    return {
        "wrong secret": (PUSH, headers(PUSH, secret="guess")),
        "flipped body byte": (bytes(flipped), good),
        "missing header": (PUSH, missing),
        "sha1 prefix": (PUSH, {**missing, "X-Hub-Signature-256": sha1}),
        "legacy sha1 header only": (PUSH, {**missing, "X-Hub-Signature": sha1}),
        "truncated digest": (PUSH, {**good, "X-Hub-Signature-256": good["X-Hub-Signature-256"][:-2]}),
        "bare digest": (PUSH, {**good, "X-Hub-Signature-256": good["X-Hub-Signature-256"][len("sha256=") :]}),
        "empty secret": (PUSH, headers(PUSH, secret="")),
        "garbage body unsigned": (b"\x00\xffnot json", missing),
    }


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(_forgeries()))
def test_forged_or_unsigned_delivery_is_401_and_stores_nothing(
    client: TestClient, state: Path, case: str
) -> None:
    body, request_headers = _forgeries()[case]
    response = client.post(GITHUB_HOOK_PATH, content=body, headers=request_headers)
    assert response.status_code == 401, response.text
    assert inbox_rows(state) == []
    assert metric(client, "push", "bad_signature") == 1


@pytest.mark.unit
def test_verify_signature_only_takes_sha256_of_the_exact_body() -> None:
    assert verify_signature(PUSH, sign(PUSH, SECRET), [SECRET])
    assert verify_signature(PUSH, sign(PUSH, SECRET).upper().replace("SHA256=", "sha256="), [SECRET])
    assert not verify_signature(PUSH, sign(PUSH, SECRET), [])
    assert not verify_signature(PUSH + b" ", sign(PUSH, SECRET), [SECRET])
    assert not verify_signature(PUSH, " " + sign(PUSH, SECRET), [SECRET])
    assert not verify_signature(PUSH, None, [SECRET])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "drop", "event"),
    [
        (b"not json at all", None, "push"),
        (b'{"truncated": ', None, "push"),
        (b"[1, 2, 3]", None, "push"),
        (b'"a string"', None, "push"),
        (b"\xff\xfe\x00", None, "push"),
        (b'{"x": NaN}', None, "push"),
        (b'{"x": 1e999}', None, "push"),
        (b'{"x": ' + b"9" * 5000 + b"}", None, "push"),
        (b"[" * 100_000 + b"]" * 100_000, None, "push"),
        (b'{"action": 7}', None, "pull_request"),
        (json.dumps(PULL_REQUEST | {"number": False}).encode(), None, "pull_request"),
        (json.dumps(PULL_REQUEST | {"number": 8}).encode(), None, "pull_request"),  # not pull_request's
        (json.dumps(PULL_REQUEST | {"pull_request": None}).encode(), None, "pull_request"),
        (b'{"ref": 5}', None, "push"),
        (b'{"ref": "refs/heads/main", "deleted": "no"}', None, "push"),
        (b'{"zen": "hi", "hook_id": true}', None, "ping"),
        (b'{"action": "created", "comment": {"id": "1"}}', None, "issue_comment"),
        (b'{"action": "opened; DROP TABLE"}', None, "pull_request"),
        (PUSH, "X-GitHub-Event", "push"),
        (PUSH, "X-GitHub-Delivery", "push"),
        (PUSH, None, "Push Event"),
        (PUSH, None, ""),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_signed_but_malformed_delivery_is_400_and_stores_nothing(
    client: TestClient, state: Path, body: bytes, drop: str | None, event: str
) -> None:
    request_headers = headers(body, event=event)
    if drop is not None:
        del request_headers[drop]
    response = client.post(GITHUB_HOOK_PATH, content=body, headers=request_headers)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "bad_request"
    assert inbox_rows(state) == []


@pytest.mark.unit
@pytest.mark.parametrize("delivery", ["", "has space", "x" * 200, "../../etc", "ünïcode"])
def test_malformed_delivery_id_is_400(client: TestClient, state: Path, delivery: str) -> None:
    request_headers = headers(PUSH)
    request_headers["X-GitHub-Delivery"] = delivery
    response = client.post(
        GITHUB_HOOK_PATH, content=PUSH, headers={k: v.encode("utf-8") for k, v in request_headers.items()}
    )
    assert response.status_code == 400
    assert inbox_rows(state) == []


@pytest.mark.unit
def test_unhandled_event_is_ignored_not_stored_but_counted(client: TestClient, state: Path) -> None:
    body = json.dumps({"action": "completed", "check_run": {"id": 1}}).encode()
    response = client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, event="check_run"))
    assert response.status_code == 202 and response.json()["status"] == "ignored"
    assert inbox_rows(state) == []
    assert metric(client, "other", "ignored") == 1


@pytest.mark.unit
def test_oversized_body_is_413_and_stores_nothing(store: SqlStore, state: Path) -> None:
    settings = WebhookSettings(github_secrets=(SECRET,), max_body_bytes=1024)
    big = json.dumps({"ref": "refs/heads/main", "pad": "x" * 2000}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    with TestClient(create_app(settings, store)) as client:
        assert client.post(GITHUB_HOOK_PATH, content=big, headers=headers(big)).status_code == 413
        assert client.post(GITHUB_HOOK_PATH, content=chunks(), headers=headers(big)).status_code == 413
        at_limit = json.dumps({"ref": "refs/heads/main", "pad": "x" * (1024 - 37)}).encode()
        assert len(at_limit) == 1024
        assert client.post(GITHUB_HOOK_PATH, content=at_limit, headers=headers(at_limit)).status_code == 202
        assert metric(client, "push", "too_large") == 2
    assert len(inbox_rows(state)) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("length", "status"), [(b"\xb2", 202), (b"9" * 5000, 413), (b"99999999999999999999", 413)]
)
def test_a_strange_content_length_is_no_5xx(store: SqlStore, state: Path, length: bytes, status: int) -> None:
    """Straight through ASGI, past any HTTP server's own checks of the header."""
    app = create_app(WebhookSettings(github_secrets=(SECRET,)), store)
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": GITHUB_HOOK_PATH,
        "query_string": b"",
        "headers": [
            (b"content-length", length),
            *((k.lower().encode(), v.encode()) for k, v in headers(PUSH).items()),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": PUSH, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == status
    assert len(inbox_rows(state)) == (1 if status == 202 else 0)


# ------------------------------------------------------------- store down


class _BrokenStore:
    """A real store whose writes fail (a full disk, a lost database), and optionally its reads."""

    def __init__(self, store: SqlStore, *, reads_fail: bool = False) -> None:
        self._store = store
        self._reads_fail = reads_fail

    def put_event(self, **kwargs: Any) -> bool:
        raise OSError("disk I/O error")

    def ping(self) -> None:
        if self._reads_fail:
            raise OSError("database is gone")
        self._store.ping()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.unit
def test_store_failure_is_503_never_2xx(settings: WebhookSettings, store: SqlStore, state: Path) -> None:
    broken = cast(SqlStore, _BrokenStore(store))
    with TestClient(create_app(settings, broken), raise_server_exceptions=True) as client:
        response = client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH))
        assert response.status_code == 503 and response.json()["status"] == "store_error"
        assert metric(client, "push", "store_error") == 1
        ping = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
        assert (
            client.post(GITHUB_HOOK_PATH, content=ping, headers=headers(ping, event="ping")).status_code
            == 503
        )
        # ignored events never touch the store, so they still answer
        assert (
            client.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, event="star")).status_code
            == 202
        )
        assert client.get("/healthz").status_code == 200
    assert inbox_rows(state) == []


@pytest.mark.unit
def test_healthz_reports_an_unreachable_store(settings: WebhookSettings, store: SqlStore) -> None:
    with TestClient(create_app(settings, store)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
    with TestClient(create_app(settings, cast(SqlStore, _BrokenStore(store, reads_fail=True)))) as client:
        assert client.get("/healthz").status_code == 503


# ------------------------------------------------------------- metrics


@pytest.mark.unit
def test_metrics_count_each_outcome_per_app(settings: WebhookSettings, store: SqlStore) -> None:
    first = TestClient(create_app(settings, store))
    second = TestClient(create_app(settings, store))
    with first, second:
        delivery = str(uuid.uuid4())
        first.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery))
        first.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery))
        first.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, secret="wrong"))
        first.post(GITHUB_HOOK_PATH, content=b"nope", headers=headers(b"nope"))
        first.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, event="fork"))
        # attacker-chosen event names fold into "other", so labels stay bounded
        first.post(GITHUB_HOOK_PATH, content=PUSH, headers={"X-GitHub-Event": "x" * 50})
        assert metric(first, "push", "accepted") == 1
        assert metric(first, "push", "duplicate") == 1
        assert metric(first, "push", "bad_signature") == 1
        assert metric(first, "push", "bad_request") == 1
        assert metric(first, "other", "ignored") == 1
        assert metric(first, "other", "bad_signature") == 1
        assert metric(second, "push", "accepted") == 0
        text = first.get("/metrics").text
        assert 'flywheel_webhook_request_duration_seconds_count{outcome="accepted"} 1.0' in text
        assert "x" * 50 not in text


# ------------------------------------------------------------- settings


@pytest.mark.unit
def test_settings_refuse_to_start_without_a_secret() -> None:
    with pytest.raises(SettingsError, match=ENV_SECRET):
        WebhookSettings.from_env({})
    with pytest.raises(SettingsError, match="empty"):
        WebhookSettings.from_env({ENV_SECRET: ""})
    with pytest.raises(SettingsError):
        WebhookSettings.from_env({ENV_SECRET: "  \n"})
    with pytest.raises(SettingsError):
        WebhookSettings(github_secrets=())
    with pytest.raises(SettingsError, match=ENV_MAX_BODY_BYTES):
        WebhookSettings.from_env({ENV_SECRET: "s", ENV_MAX_BODY_BYTES: "lots"})
    with pytest.raises(SettingsError):
        WebhookSettings.from_env({ENV_SECRET: "s", ENV_MAX_BODY_BYTES: "0"})


@pytest.mark.unit
def test_settings_from_env() -> None:
    settings = WebhookSettings.from_env({ENV_SECRET: " a,b "})
    assert settings.github_secrets == (" a,b ",)  # taken exactly: never split or trimmed
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 25 * 1024 * 1024
    rotating = WebhookSettings.from_env(
        {ENV_SECRET: "new", ENV_PREVIOUS_SECRET: "old", ENV_MAX_BODY_BYTES: "1000"}
    )
    assert rotating.github_secrets == ("new", "old") and rotating.max_body_bytes == 1000
    assert "new" not in repr(rotating) and "old" not in repr(rotating)


# ------------------------------------------------------------- over a real socket


@pytest.fixture
def live(settings: WebhookSettings, store: SqlStore) -> Iterator[str]:
    """The app under a real uvicorn on a loopback port; yields its base URL."""
    limited = WebhookSettings(github_secrets=settings.github_secrets, max_body_bytes=64 * 1024)
    with served(create_app(limited, store), lifespan="off") as url:
        yield url


@pytest.mark.integration
def test_real_server_accepts_over_keep_alive(live: str, state: Path) -> None:
    with httpx.Client(base_url=live) as http:
        delivery = str(uuid.uuid4())
        assert (
            http.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery)).status_code
            == 202
        )
        assert (
            http.post(GITHUB_HOOK_PATH, content=PUSH, headers=headers(PUSH, delivery=delivery)).status_code
            == 200
        )
        assert http.get("/healthz").status_code == 200
    assert [row[1] for row in inbox_rows(state)] == [delivery]


@pytest.mark.integration
def test_real_server_answers_413_without_waiting_for_the_rest_of_the_body(live: str, state: Path) -> None:
    port = int(live.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
            b"X-GitHub-Delivery: 1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"{" * 4096
        )  # announces 1 GB, sends 4 KB: the answer must come anyway
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"8000\r\n"
            + b"x" * 0x8000
            + b"\r\n"
            + b"8000\r\n"
            + b"x" * 0x8000
            + b"\r\n"
            + b"8000\r\n"
            + b"x" * 0x8000
            + b"\r\n"
        )  # no length announced; 96 KB against a 64 KB limit, never finished
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert inbox_rows(state) == []

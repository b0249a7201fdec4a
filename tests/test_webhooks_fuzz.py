"""Fuzzing the GitHub webhook receiver with random and mutated deliveries.

Pins down that no request, however malformed — random bytes, truncated or
mutated real payloads, huge numbers, deep nesting, unicode, wrong types,
random header values, signed or not — makes the receiver answer 5xx (the
store here never fails), and that no request without a valid signature
changes the store (Invariant 3). Hypothesis drives ~2,000 cases with a fixed
seed (``derandomize``) so a failure reproduces.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK
from webhooks.app import GITHUB_HOOK_PATH, create_app
from webhooks.github import sign, verify_signature
from webhooks.settings import WebhookSettings

SECRET = "fuzz secret"
LIMIT = 64 * 1024
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "github-webhooks"


def _seed_bodies() -> list[bytes]:
    names = ["pull_request.opened.payload.json", "push.payload.json", "issue_comment.created.payload.json"]
    found = [(REFERENCE / name).read_bytes() for name in names if (REFERENCE / name).is_file()]
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


bodies = st.one_of(
    st.binary(max_size=300),
    mutated_seed(),
    retyped_object(),
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


def _rows(state: Path) -> int:
    with sqlite3.connect(state / "state.db") as db:
        return int(db.execute("SELECT count(*) FROM inbox_events").fetchone()[0])


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
        finally:
            store.close()


def _fuzz(client: TestClient, state: Path) -> None:
    @settings(
        max_examples=2000,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(body=bodies, event=st.none() | events, delivery=st.none() | deliveries, how=signing)
    def case(body: bytes, event: str | None, delivery: str | None, how: str) -> None:
        request_headers: dict[str, bytes] = {}
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

"""Group commit in the GitHub webhook receiver: deliveries that arrive together share a transaction.

Pins down that batching keeps Invariant 5's first step and Invariant 3: a
request is answered only after the transaction holding its delivery has
committed; when that transaction fails, every request of the batch answers
503 and nothing of the batch is stored (while an earlier, committed batch
stays); a delivery id repeated inside one batch is stored once (one 202, the
rest 200 ``duplicate``), as is one repeated from an earlier batch; the
writer thread ends when idle and starts again with the next delivery; and a
payload is stored as the very body that was verified (not serialised again)
when that text reads back as the same object, and serialised otherwise.

Requests run concurrently through httpx's ASGI transport on one event loop;
a store wrapper holds the first transaction open before its commit, so the
next deliveries gather behind it and form one batch.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.testclient import TestClient

import webhooks.app
from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.settings import WebhookSettings
from webhooks.app import GITHUB_HOOK_PATH, create_app
from webhooks.github import sign

pytestmark = pytest.mark.unit
SECRET = "batch secret"
POISON = "poison-delivery"


def body_for(n: int) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": f"{n:040d}", "commits": []}).encode()


def headers(body: bytes, delivery: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(body, SECRET),
        "Content-Type": "application/json",
    }


def inbox_ids(state: Path) -> list[str]:
    with sqlite3.connect(state / "state.db") as db:
        return [row[0] for row in db.execute("SELECT delivery_id FROM inbox_events ORDER BY id")]


class _GatedStore:
    """A real store that records each transaction's deliveries, can hold the first one open before
    its commit, and fails any transaction that stores the poison delivery id."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.batches: list[list[str]] = []
        self.holding = threading.Event()  # set while the first transaction waits before its commit
        self.release = threading.Event()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.batches.append([])
        first = len(self.batches) == 1
        with self._store.transaction():
            yield
            if first:
                self.holding.set()
                assert self.release.wait(10), "the test never released the first transaction"

    def put_event(self, **kwargs: Any) -> bool:
        self.batches[-1].append(kwargs["delivery_id"])
        if kwargs["delivery_id"] == POISON:
            raise OSError("disk I/O error")
        return self._store.put_event(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def gated(state: Path) -> Iterator[_GatedStore]:
    store = open_store(state, clock=SYSTEM_CLOCK)
    yield _GatedStore(store)
    store.close()


async def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _first_then_batch(
    gated: _GatedStore, state: Path, deliveries: list[str]
) -> tuple[httpx.Response, list[httpx.Response]]:
    """Deliver "first" and hold its transaction open, deliver ``deliveries`` meanwhile, then release."""
    app = create_app(WebhookSettings(github_secrets=(SECRET,)), cast(SqlStore, gated))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:

        async def post(n: int, delivery: str) -> httpx.Response:
            body = body_for(n)
            return await client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, delivery))

        first = asyncio.create_task(post(0, "first"))
        await _wait_until(gated.holding.is_set)
        await asyncio.sleep(0.05)
        assert not first.done(), "answered before its transaction committed"
        assert inbox_ids(state) == []
        rest = [asyncio.create_task(post(n, delivery)) for n, delivery in enumerate(deliveries, start=1)]
        await asyncio.sleep(0.3)  # every one of them reaches the writer's queue meanwhile
        assert not any(task.done() for task in rest)
        gated.release.set()
        return await first, list(await asyncio.gather(*rest))


def test_a_failed_transaction_answers_503_to_every_request_of_its_batch(
    gated: _GatedStore, state: Path
) -> None:
    deliveries = ["b", "c", POISON, "d"]
    first, rest = asyncio.run(_first_then_batch(gated, state, deliveries))
    # "d" was in the same batch; the transaction failed before reaching it
    assert gated.batches == [["first"], ["b", "c", POISON]]
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    assert [r.status_code for r in rest] == [503] * 4
    assert all(r.json()["status"] == "store_error" for r in rest)
    assert inbox_ids(state) == ["first"]  # the committed batch stays; nothing of the failed one is stored


def test_a_delivery_repeated_inside_one_batch_is_stored_once(gated: _GatedStore, state: Path) -> None:
    deliveries = ["b", "c", "b", "first", "d", "c"]
    first, rest = asyncio.run(_first_then_batch(gated, state, deliveries))
    assert gated.batches == [["first"], deliveries]
    assert first.status_code == 202
    answers = [(r.status_code, r.json()["status"], r.json()["delivery"]) for r in rest]
    assert answers == [
        (202, "accepted", "b"),
        (202, "accepted", "c"),
        (200, "duplicate", "b"),
        (200, "duplicate", "first"),
        (202, "accepted", "d"),
        (200, "duplicate", "c"),
    ]
    assert inbox_ids(state) == ["first", "b", "c", "d"]


def test_the_writer_thread_ends_when_idle_and_starts_again(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks.app, "_WRITER_IDLE_SECONDS", 0.05)
    store = open_store(state, clock=SYSTEM_CLOCK)
    app = create_app(WebhookSettings(github_secrets=(SECRET,)), store)

    others = {t for t in threading.enumerate() if t.name == "flywheel-inbox-writer"}  # earlier tests' apps

    def writers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "flywheel-inbox-writer"} - others

    async def deliver_twice() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            codes = []
            for n in range(2):
                body = body_for(n)
                delivery = str(uuid.uuid4())
                response = await client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, delivery))
                codes.append(response.status_code)
                await _wait_until(lambda: not writers())  # ended after 0.05 s idle
        return codes

    try:
        assert asyncio.run(deliver_twice()) == [202, 202]
        assert len(inbox_ids(state)) == 2
    finally:
        store.close()


def test_the_stored_payload_is_the_verified_body_or_reads_back_the_same(state: Path) -> None:
    store = open_store(state, clock=SYSTEM_CLOCK)
    client = TestClient(create_app(WebhookSettings(github_secrets=(SECRET,)), store))
    pretty = '{\n  "ref": "refs/heads/main",\n  "note": "café ✓",\n  "n": 1.50,\n  "ref": "refs/heads/x"\n}'
    bodies = {
        "utf8": pretty.encode(),  # stored verbatim: whitespace, 1.50, the repeated key and all
        "utf16": pretty.encode("utf-16"),  # json reads UTF-16 too; stored serialised again
        "bom": b"\xef\xbb\xbf" + pretty.encode(),
    }
    try:
        for delivery, body in bodies.items():
            assert (
                client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, delivery)).status_code
                == 202
            )
    finally:
        client.close()
        store.close()
    with sqlite3.connect(state / "state.db") as db:
        stored = dict(db.execute("SELECT delivery_id, payload FROM inbox_events").fetchall())
    assert stored["utf8"] == pretty
    expected = {"ref": "refs/heads/x", "note": "café ✓", "n": 1.5}
    assert {delivery: json.loads(text) for delivery, text in stored.items()} == dict.fromkeys(
        bodies, expected
    )
    reopened = open_store(state, clock=SYSTEM_CLOCK)
    try:
        assert reopened.get_event(1).payload == expected
    finally:
        reopened.close()

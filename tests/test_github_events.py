"""Handling GitHub events from the inbox (webhooks.events), with GitHub's real payloads.

Pins down: ``pull_request`` opened/synchronize/reopened/closed record the
pull request and return its ref (plus the base branch after a merge);
``push`` returns the pushed branch, not tags or deleted branches;
``issue_comment`` created runs the commands, edits and bots are ignored;
``ping`` does nothing; every handled event is completed, a bad one with its
error recorded and nothing raised; events that are not GitHub deliveries go
to ``other`` (or stay claimed for their own consumer); the handler class
collects refs for a dispatcher keyed by kind.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.backends.store import InboxEvent, Store, open_store
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.specs import Catalog, load_tree
from tests.fakes.github_api import issue_comment_event, pull_request_event, reference_payload
from webhooks.events import GITHUB_EVENT_KINDS, GitHubEventHandler, process_github_events

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA1, SHA2 = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_tree(REPO_ROOT)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    yield opened
    opened.close()


_deliveries = itertools.count(1)


def put(store: Store, event: str, payload: dict[str, Any], *, source: str = "github") -> None:
    """Write an event to the inbox as the receiver does: kind ``<event>.<action>``, or ``<event>``."""
    kind = f"{event}.{payload['action']}" if "action" in payload else event
    assert store.put_event(source=source, delivery_id=f"d-{next(_deliveries)}", kind=kind, payload=payload)


def process(store: Store, catalog: Catalog, **kw: Any) -> set[str]:
    return process_github_events(
        store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        limit=50,
        **kw,
    )


def events(store: Store) -> list[InboxEvent]:
    """Every inbox event, in order (ids start at 1)."""
    return [store.get_event(i) for i in range(1, 50) if _exists(store, i)]


def _exists(store: Store, event_id: int) -> bool:
    try:
        store.get_event(event_id)
    except LookupError:
        return False
    return True


def test_pull_request_lifecycle(store: Store, catalog: Catalog) -> None:
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=4, head_ref="tune", head_sha=SHA1, author="bob-ml"),
    )
    assert process(store, catalog) == {"tune"}
    info = store.pull_request(4)
    assert info is not None and (info.head_sha, info.author, info.fork) == (SHA1, "bob-ml", False)

    put(
        store,
        "pull_request",
        pull_request_event(
            "synchronize",
            number=4,
            head_ref="tune",
            head_sha=SHA2,
            author="bob-ml",
            updated_at="2024-05-01T13:00:00Z",
        ),
    )
    assert process(store, catalog) == {"tune"}
    info = store.pull_request(4)
    assert info is not None and info.head_sha == SHA2

    put(
        store,
        "pull_request",
        pull_request_event(
            "closed",
            number=4,
            head_ref="tune",
            head_sha=SHA2,
            author="bob-ml",
            merged=True,
            updated_at="2024-05-01T14:00:00Z",
        ),
    )
    assert process(store, catalog) == {"tune", "master"}  # the reference payload's base branch
    info = store.pull_request(4)
    assert info is not None and info.merged and info.state == "closed"
    assert all(e.completed_at is not None and e.error is None for e in events(store))


def test_real_reference_payloads_are_handled(store: Store, catalog: Catalog) -> None:
    for name in [
        "pull_request.opened",
        "pull_request.reopened",
        "pull_request.synchronize",
        "pull_request.closed",
    ]:
        payload = reference_payload(name)
        put(store, "pull_request", payload)
    put(store, "push", reference_payload("push"))  # a tag: nothing to reconcile
    put(store, "ping", reference_payload("ping"))
    put(store, "issue_comment", reference_payload("issue_comment.created"))  # no command in it
    assert process(store, catalog) == {"changes"}
    assert all(e.completed_at is not None and e.error is None for e in events(store))
    assert store.due_messages(now=datetime.now(UTC) + timedelta(days=1)) == []


def test_pushes(store: Store, catalog: Catalog) -> None:
    push = copy.deepcopy(reference_payload("push"))
    push.update(ref="refs/heads/main", deleted=False)
    put(store, "push", push)
    gone = copy.deepcopy(push)
    gone.update(ref="refs/heads/old", deleted=True)
    put(store, "push", gone)
    assert process(store, catalog) == {"main"}


def test_comment_commands_run_edits_and_bots_are_ignored(store: Store, catalog: Catalog) -> None:
    put(
        store,
        "issue_comment",
        issue_comment_event("/flywheel help", login="alice-ml", number=3, comment_id=1),
    )
    put(
        store,
        "issue_comment",
        issue_comment_event("/flywheel help", login="alice-ml", number=3, comment_id=2, action="edited"),
    )
    put(
        store, "issue_comment", issue_comment_event("/flywheel help", login="ci[bot]", number=3, comment_id=3)
    )
    assert process(store, catalog) == set()
    replies = [
        m
        for m in store.due_messages(now=datetime.now(UTC) + timedelta(days=1))
        if m.payload["kind"] == "reply"
    ]
    assert [m.payload["in_reply_to"] for m in replies] == [1]
    assert replies[0].payload["repo"] == "Codertocat/Hello-World"  # the event's repository


def test_ok_to_test_returns_the_ref_to_reconcile(store: Store, catalog: Catalog) -> None:
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=8, head_ref="main", head_sha=SHA1, author="stranger", fork=True),
    )
    assert process(store, catalog) == {"pull/8/head"}
    put(store, "issue_comment", issue_comment_event("/flywheel ok-to-test", login="alice-ml", number=8))
    assert process(store, catalog) == {"pull/8/head"}


def test_a_bad_event_is_completed_with_its_error(store: Store, catalog: Catalog) -> None:
    put(store, "pull_request", {"action": "opened", "number": 1})
    put(store, "ping", reference_payload("ping"))
    assert process(store, catalog) == set()
    bad, ping = events(store)
    assert bad.completed_at is not None and bad.error is not None and "pull_request" in bad.error
    assert ping.completed_at is not None and ping.error is None


def test_other_events_go_to_their_handler_or_stay_claimed(store: Store, catalog: Catalog) -> None:
    put(store, "retrain", {"model": "iris"})
    put(store, "block_actions", {"type": "block_actions"}, source="slack")
    seen: list[str] = []
    assert process(store, catalog, other=lambda e: seen.append(e.kind) or {"x"}) == {"x"}
    assert seen == ["retrain", "block_actions"]

    put(store, "rollback", {"model": "iris"})
    assert process(store, catalog) == set()
    (rollback,) = [e for e in events(store) if e.kind == "rollback"]
    assert rollback.completed_at is None and rollback.claimed_by is not None


def test_handler_for_a_dispatcher_keyed_by_kind(store: Store, catalog: Catalog) -> None:
    assert {"pull_request.opened", "pull_request.closed", "push", "issue_comment.created", "ping"} <= set(
        GITHUB_EVENT_KINDS
    )
    commands = Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK)
    handler = GitHubEventHandler(store, catalog=lambda: catalog, commands=commands)
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=4, head_ref="tune", head_sha=SHA1, author="bob-ml"),
    )
    for event in store.claim_events(limit=10, worker="controller"):
        assert event.kind in GITHUB_EVENT_KINDS
        handler(event)
        store.complete_event(event.id)
    assert handler.take_refs() == {"tune"}
    assert handler.take_refs() == set()

"""Handling GitHub events from the inbox (controller.engine.github_events), with GitHub's real payloads.

Pins down: ``pull_request`` opened/synchronize/reopened/closed record the
pull request and name its ref to reconcile (plus the base branch after a
merge), and only that one; ``push`` names the pushed branch, not tags or
deleted branches; ``issue_comment`` created runs the commands (a retrain
starts its run at once, without another trip through the inbox), edits and
bots are ignored; ``ping`` does nothing; every handled event is completed, a
bad one with its error recorded and nothing raised; the inbox's one
dispatcher hands every other kind to its own handler, and the GitHub handler
serves every GitHub kind.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.backends.forge.github import GitHubForge
from controller.backends.store import InboxEvent
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.github_events import GITHUB_EVENT_KINDS, GitHubEvents
from controller.engine.inbox import Handler, InboxDispatcher
from controller.specs import Catalog
from tests.fakes.github_api import issue_comment_event, pull_request_event, reference_payload

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[1]
SHA1, SHA2 = "a" * 40, "b" * 40


_deliveries = itertools.count(1)


def put(store: SqlStore, event: str, payload: dict[str, Any], *, source: str = "github") -> None:
    """Write an event to the inbox as the receiver does: kind ``<event>.<action>``, or ``<event>``."""
    kind = f"{event}.{payload['action']}" if "action" in payload else event
    assert store.put_event(source=source, delivery_id=f"d-{next(_deliveries)}", kind=kind, payload=payload)


class Retrains:
    """Records what it is asked to retrain and answers with run ids, as the proposal reconciler does."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, model: str, ref: str | None) -> int:
        self.asked.append((model, ref))
        return 100 + len(self.asked)


def github_events(store: SqlStore, catalog: Catalog, retrain: Retrains | None = None) -> GitHubEvents:
    return GitHubEvents(
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        replies=lambda repository: GitHubForge(store, repository),
        retrain=retrain or Retrains(),
    )


def process(
    store: SqlStore,
    catalog: Catalog,
    *,
    retrain: Retrains | None = None,
    others: dict[str, Handler] | None = None,
) -> set[str]:
    """Handle the inbox as the controller does: GitHub's kinds by the GitHub handler, ``others`` by theirs."""
    handlers: dict[str, Handler] = dict.fromkeys(GITHUB_EVENT_KINDS, github_events(store, catalog, retrain))
    return InboxDispatcher(store, {**handlers, **(others or {})}).handle_due(limit=50)


def events(store: SqlStore) -> list[InboxEvent]:
    """Every inbox event, in order (ids start at 1)."""
    return [store.get_event(i) for i in range(1, 50) if _exists(store, i)]


def _exists(store: SqlStore, event_id: int) -> bool:
    try:
        store.get_event(event_id)
    except LookupError:
        return False
    return True


def test_pull_request_lifecycle(store: SqlStore, catalog: Catalog) -> None:
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


def test_real_reference_payloads_are_handled(store: SqlStore, catalog: Catalog) -> None:
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


def test_pushes(store: SqlStore, catalog: Catalog) -> None:
    push = copy.deepcopy(reference_payload("push"))
    push.update(ref="refs/heads/main", deleted=False)
    put(store, "push", push)
    gone = copy.deepcopy(push)
    gone.update(ref="refs/heads/old", deleted=True)
    put(store, "push", gone)
    assert process(store, catalog) == {"main"}


def test_comment_commands_run_edits_and_bots_are_ignored(store: SqlStore, catalog: Catalog) -> None:
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


def test_ok_to_test_returns_the_ref_to_reconcile(store: SqlStore, catalog: Catalog) -> None:
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=8, head_ref="main", head_sha=SHA1, author="stranger", fork=True),
    )
    assert process(store, catalog) == {"pull/8/head"}
    put(store, "issue_comment", issue_comment_event("/flywheel ok-to-test", login="alice-ml", number=8))
    assert process(store, catalog) == {"pull/8/head"}


def test_a_bad_event_is_completed_with_its_error(store: SqlStore, catalog: Catalog) -> None:
    put(store, "pull_request", {"action": "opened", "number": 1})
    put(store, "ping", reference_payload("ping"))
    assert process(store, catalog) == set()
    bad, ping = events(store)
    assert bad.completed_at is not None and bad.error is not None and "pull_request" in bad.error
    assert ping.completed_at is not None and ping.error is None


def test_a_retrain_comment_starts_the_run_at_once(store: SqlStore, catalog: Catalog) -> None:
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=4, head_ref="tune", head_sha=SHA1, author="bob-ml"),
    )
    put(store, "issue_comment", issue_comment_event("/flywheel retrain iris", login="alice-ml", number=4))
    retrains = Retrains()
    assert process(store, catalog, retrain=retrains) == {"tune"}  # the pull request's, not the retrain's
    assert retrains.asked == [("iris", "tune")]
    assert [e.kind for e in events(store)] == ["pull_request.opened", "issue_comment.created"]  # no retrain
    assert all(e.completed_at is not None and e.error is None for e in events(store))


def test_other_kinds_go_to_their_own_handler(store: SqlStore, catalog: Catalog) -> None:
    put(store, "retrain", {"model": "iris"})
    put(store, "block_actions", {"type": "block_actions"}, source="slack")
    put(store, "ping", reference_payload("ping"))
    seen: list[str] = []

    def other(event: InboxEvent) -> set[str]:
        seen.append(event.kind)
        return {"x"}

    assert process(store, catalog, others={"retrain": other, "block_actions": other}) == {"x"}
    assert seen == ["retrain", "block_actions"]
    assert all(e.completed_at is not None and e.error is None for e in events(store))


def test_one_handler_serves_every_github_kind(store: SqlStore, catalog: Catalog) -> None:
    assert {"pull_request.opened", "pull_request.closed", "push", "issue_comment.created", "ping"} <= set(
        GITHUB_EVENT_KINDS
    )
    handler = github_events(store, catalog)
    put(
        store,
        "pull_request",
        pull_request_event("opened", number=4, head_ref="tune", head_sha=SHA1, author="bob-ml"),
    )
    put(store, "ping", reference_payload("ping"))
    refs = []
    for event in store.claim_events(limit=10, worker="controller"):
        assert event.kind in GITHUB_EVENT_KINDS
        refs.append(handler(event))
        store.complete_event(event.id)
    assert refs == [{"tune"}, set()]

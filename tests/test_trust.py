"""The trust gate for outside contributors (controller.engine.trust), Invariant 2.

Pins down: a branch without a pull request (the team's own push) runs; a
pull request by an author main's policy trusts runs; one from a fork, or by
an author the policy does not trust, runs nothing until a trusted user
comments ``/flywheel ok-to-test``, which covers exactly the head commit of
that moment — a new push is gated again; ``ok-to-test`` from someone the
policy does not allow is refused and audited; a ``pull/<n>/head`` ref with
no record runs nothing; events arriving out of order do not roll the
recorded head back; a fork's branch name never gates (or opens) ours.
Payloads are GitHub's real ones (../shared/reference/github-webhooks/).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backends.forge.github import GitHubForge
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.comments import handle_comment
from controller.engine.trust import (
    TrustGate,
    author_trusted,
    record_pull_request,
)
from controller.specs import Catalog
from tests.fakes.github_api import issue_comment_event, pull_request_event

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[1]
SHA1, SHA2 = "a" * 40, "b" * 40
# In the repository's own policy: alice-ml (ML engineer) and erin-platform are trusted and may say
# ok-to-test; carol-biz (business owner) is known but not trusted; mallory is nobody.


@pytest.fixture
def gate(store: SqlStore, catalog: Catalog) -> TrustGate:
    return TrustGate(store, lambda: catalog)


def retrains(model: str, ref: str | None) -> int:
    raise AssertionError(f"nothing here asks to retrain, yet {model} on {ref} was")


def comment(store: SqlStore, catalog: Catalog, body: str, *, login: str, number: int) -> list[bool]:
    outcome = handle_comment(
        issue_comment_event(body, login=login, number=number),
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        forge=GitHubForge(store, "octo-org/models"),
        retrain=retrains,
    )
    return [r.ok for r in outcome.results]


def test_trust_follows_mains_policy(catalog: Catalog) -> None:
    policy = catalog.policies["default"]
    assert author_trusted(policy, "alice-ml")
    assert author_trusted(policy, "ERIN-platform")  # GitHub logins are case-insensitive
    assert not author_trusted(policy, "carol-biz")
    assert not author_trusted(policy, "mallory")


def test_a_branch_without_pull_request_runs(gate: TrustGate) -> None:
    admitted, why = gate.admits("feature-x", SHA1)
    assert admitted and "no pull request" in why


def test_a_trusted_authors_pull_request_runs(store: SqlStore, gate: TrustGate) -> None:
    record_pull_request(
        store, pull_request_event("opened", number=5, head_ref="tune-iris", head_sha=SHA1, author="alice-ml")
    )
    assert gate.admits("tune-iris", SHA1)[0]


def test_an_untrusted_authors_pull_request_waits_for_ok_to_test_of_that_commit(
    store: SqlStore, catalog: Catalog, gate: TrustGate
) -> None:
    record_pull_request(
        store,
        pull_request_event("opened", number=6, head_ref="carol-idea", head_sha=SHA1, author="carol-biz"),
    )
    admitted, why = gate.admits("carol-idea", SHA1)
    assert not admitted and "ok-to-test" in why

    assert comment(store, catalog, "/flywheel ok-to-test", login="alice-ml", number=6) == [True]
    assert gate.admits("carol-idea", SHA1)[0]
    entry = store.audit()[-1]
    assert (entry.actor, entry.action, entry.detail["sha"]) == ("alice", "command.ok-to-test", SHA1)

    # a new push is not covered
    record_pull_request(
        store,
        pull_request_event(
            "synchronize",
            number=6,
            head_ref="carol-idea",
            head_sha=SHA2,
            author="carol-biz",
            updated_at="2024-05-01T13:00:00Z",
        ),
    )
    assert not gate.admits("carol-idea", SHA2)[0]
    assert comment(store, catalog, "/flywheel ok-to-test", login="erin-platform", number=6) == [True]
    assert gate.admits("carol-idea", SHA2)[0]
    assert not gate.admits("carol-idea", SHA1)[0]  # the old commit is no longer the one approved


def test_a_fork_waits_even_for_a_trusted_author(store: SqlStore, catalog: Catalog, gate: TrustGate) -> None:
    info = record_pull_request(
        store,
        pull_request_event("opened", number=9, head_ref="main", head_sha=SHA1, author="alice-ml", fork=True),
    )
    assert info is not None and info.fork and info.ref == "pull/9/head"
    assert not gate.admits("pull/9/head", SHA1)[0]
    assert gate.admits("main", SHA1)[0]  # the fork's "main" says nothing about ours
    assert comment(store, catalog, "/flywheel ok-to-test", login="alice-ml", number=9) == [True]
    assert gate.admits("pull/9/head", SHA1)[0]


@pytest.mark.parametrize("login", ["carol-biz", "mallory"])
def test_ok_to_test_by_someone_not_allowed_is_refused_and_audited(
    store: SqlStore, catalog: Catalog, gate: TrustGate, login: str
) -> None:
    record_pull_request(
        store, pull_request_event("opened", number=6, head_ref="idea", head_sha=SHA1, author="mallory")
    )
    assert comment(store, catalog, "/flywheel ok-to-test", login=login, number=6) == [False]
    assert not gate.admits("idea", SHA1)[0]
    entry = store.audit()[-1]
    assert entry.action == "command.refused"
    assert (entry.detail["command"], entry.detail["refusal"], entry.detail["as"]) == (
        "ok-to-test",
        "not_allowed",
        login,
    )


def test_ok_to_test_naming_an_older_commit_is_refused(
    store: SqlStore, catalog: Catalog, gate: TrustGate
) -> None:
    record_pull_request(
        store, pull_request_event("opened", number=6, head_ref="idea", head_sha=SHA2, author="mallory")
    )
    assert comment(store, catalog, f"/flywheel ok-to-test {SHA1[:7]}", login="alice-ml", number=6) == [False]
    assert not gate.admits("idea", SHA2)[0]
    assert comment(store, catalog, f"/flywheel ok-to-test {SHA2[:10]}", login="alice-ml", number=6) == [True]
    assert gate.admits("idea", SHA2)[0]


def test_a_pull_request_ref_without_record_runs_nothing(gate: TrustGate) -> None:
    admitted, why = gate.admits("pull/77/head", SHA1)
    assert not admitted and "no record" in why


def test_events_out_of_order_do_not_roll_the_head_back(store: SqlStore) -> None:
    newer = pull_request_event(
        "synchronize",
        number=3,
        head_ref="x",
        head_sha=SHA2,
        author="mallory",
        updated_at="2024-05-02T00:00:00Z",
    )
    older = pull_request_event(
        "opened", number=3, head_ref="x", head_sha=SHA1, author="mallory", updated_at="2024-05-01T00:00:00Z"
    )
    record_pull_request(store, newer)
    record_pull_request(store, older)
    info = store.pull_request(3)
    assert info is not None and info.head_sha == SHA2


def test_malformed_pull_request_payload_records_nothing(store: SqlStore) -> None:
    assert record_pull_request(store, {"action": "opened", "pull_request": {"number": "x"}}) is None
    assert record_pull_request(store, {"action": "opened"}) is None

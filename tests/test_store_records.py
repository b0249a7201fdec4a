"""The store's GitHub and Slack records, and the shape of the store's protocols.

Pins down: a pull request's record is replaced by a newer event's and kept
against an older one (GitHub does not promise order), maps its head branch to
its number only when the head is a branch of this repository, and is open
while its last record says so; an ok-to-test covers one head commit and a new
one replaces it; a comment is handled once, whichever delivery marks it; the
ids GitHub gave (check runs, sticky reports, replies, a branch's pull request)
are kept per kind of thing and replaced in place, GitHub's 64-bit ids
included; the poll cursor is one row; a Slack message's reference, view and
answered events read back as saved. Values read back as they were written (a
JSON ``1`` stays an ``int``). Every record kind has its protocol of at most
12 methods, all of which :class:`SqlStore` implements; together they are all
of its public methods, none in two kinds; a keyword a method does not take, or
one it needs left out, is a ``TypeError`` as it would be for spelt-out
parameters; and ``meta`` gets no key from any of them.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Protocol

import pytest

import controller.backends.store as store_package
from controller.backends.store import (
    BranchPullRef,
    CheckRunRef,
    OkToTest,
    PollCursor,
    PullRequest,
    ReplyCommentRef,
    ReportCommentRef,
    SlackMessage,
    StepResult,
)
from controller.backends.store.sql import SqlStore
from controller.clock import Clock, FakeClock
from tests.fixtures import T0

pytestmark = pytest.mark.unit
REPO = "octo-org/models"
PULL = PullRequest(
    number=6,
    head_ref="tune",
    head_sha="a" * 40,
    base_ref="main",
    author="octocat",
    fork=False,
    state="open",
    merged=False,
    updated_at="2024-05-01T12:00:00Z",
)
PROTOCOLS = (
    "StateIntegrity",
    "Inbox",
    "RunRecords",
    "Registry",
    "RolloutRecords",
    "ApprovalRecords",
    "AuditLog",
    "Outbox",
    "ReviewRecords",
    "PullRequestRecords",
    "SlackRecords",
    "Transactions",
    "Meta",
)


@pytest.fixture
def store_clock(clock: FakeClock) -> Clock:
    """The store here stamps with the test's fake clock."""
    return clock


def with_(pull: PullRequest, **changes: object) -> PullRequest:
    return PullRequest(**{**pull.__dict__, **changes})  # type: ignore[arg-type]


# ------------------------------------------------------------- pull requests


def test_a_newer_event_replaces_the_record_and_an_older_one_does_not(store: SqlStore) -> None:
    assert store.pull_request(6) is None
    assert store.save_pull_request(PULL) == PULL
    newer = with_(PULL, head_sha="b" * 40, updated_at="2024-05-01T13:00:00Z")
    assert store.save_pull_request(newer) == newer
    older = with_(PULL, head_sha="c" * 40, updated_at="2024-05-01T12:30:00Z")
    assert store.save_pull_request(older) == newer  # what is stored, unchanged
    assert store.pull_request(6) == newer
    undated = with_(PULL, head_sha="d" * 40, updated_at="")  # no time to compare: it is recorded
    assert store.save_pull_request(undated) == store.pull_request(6) == undated


def test_only_a_branch_of_this_repository_maps_to_its_pull_request(store: SqlStore) -> None:
    store.save_pull_request(PULL)
    store.save_pull_request(with_(PULL, number=9, head_ref="main", fork=True))
    assert store.pull_number_for_branch("tune") == 6
    assert store.pull_number_for_branch("main") is None  # a fork's branch says nothing about ours
    store.save_pull_request(with_(PULL, number=11, state="closed"))  # the last recorded takes the branch
    assert store.pull_number_for_branch("tune") == 11


def test_the_open_pull_requests_are_those_last_recorded_open(store: SqlStore) -> None:
    store.save_pull_request(with_(PULL, number=9, fork=True, head_ref="x"))
    store.save_pull_request(PULL)
    store.save_pull_request(with_(PULL, number=4, state="closed", merged=True))
    assert [(p.number, p.fork) for p in store.open_pull_requests()] == [(6, False), (9, True)]
    store.save_pull_request(with_(PULL, state="closed", updated_at="2024-05-02T00:00:00Z"))
    assert [p.number for p in store.open_pull_requests()] == [9]


def test_ok_to_test_covers_one_commit_and_a_new_one_replaces_it(store: SqlStore, clock: FakeClock) -> None:
    assert store.ok_to_test(6) is None
    assert store.grant_ok_to_test(number=6, sha="a" * 40) == OkToTest(6, "a" * 40, T0)
    clock.advance(60)
    store.grant_ok_to_test(number=6, sha="b" * 40)
    assert store.ok_to_test(6) == OkToTest(6, "b" * 40, T0 + timedelta(seconds=60))
    assert store.ok_to_test(7) is None


def test_a_comment_is_handled_once(store: SqlStore) -> None:
    comment = 3_000_000_001  # over 32 bits, as GitHub's are now
    assert not store.comment_handled(comment)
    store.mark_comment_handled(comment, delivery_id="webhook-1")
    store.mark_comment_handled(comment, delivery_id="poll-comment-1")  # the other delivery: no error
    assert store.comment_handled(comment) and not store.comment_handled(comment + 1)


def test_github_ids_are_kept_per_kind_of_thing_and_replaced_in_place(store: SqlStore) -> None:
    refs = [
        CheckRunRef(REPO, "1" * 40, "iris"),
        ReportCommentRef(REPO, 6, "iris"),
        ReplyCommentRef(REPO, 3_000_000_001),
        BranchPullRef(REPO, "tune"),
    ]
    assert [store.github_id(ref) for ref in refs] == [None] * 4
    for number, ref in enumerate(refs):
        store.remember_github_id(ref, 20_000_000_000 + number)
    assert [store.github_id(ref) for ref in refs] == [20_000_000_000 + n for n in range(4)]
    store.remember_github_id(refs[1], 77)
    assert store.github_id(refs[1]) == 77
    assert store.github_id(ReportCommentRef(REPO, 6, "other-model")) is None
    assert store.github_id(ReportCommentRef("someone/else", 6, "iris")) is None


def test_the_poll_cursor_is_one_row(store: SqlStore) -> None:
    assert store.poll_cursor() is None
    first = PollCursor(listening_since=T0, comments_since=T0)
    store.save_poll_cursor(first)
    later = PollCursor(listening_since=T0, comments_since=T0 + timedelta(minutes=5))
    store.save_poll_cursor(later)
    assert store.poll_cursor() == later


# --------------------------------------------------------------------- slack


def test_a_slack_message_reads_back_as_saved(store: SqlStore) -> None:
    assert store.slack_message(model="iris", version=1) is None
    message = SlackMessage(
        model="iris",
        version=1,
        channel="C0RELEASES",
        ts="1.000001",
        view={"stage": "staging", "weight": 10, "metrics": {"accuracy": 0.97}},
        replied=("a", "b"),
    )
    store.save_slack_message(message)
    assert store.slack_message(model="iris", version=1) == message
    edited = SlackMessage(**{**message.__dict__, "ts": "2.0", "replied": ("a", "b", "c")})
    store.save_slack_message(edited)
    assert store.slack_message(model="iris", version=1) == edited
    assert store.slack_message(model="iris", version=2) is None


# ------------------------------------------------------------------- mapping


def test_values_read_back_as_written(store: SqlStore) -> None:
    run = store.create_run(model="m", ref="main", commit="c", cache_key="k", params={"n": 1, "rate": 0.5})
    done = store.update_run(
        run.id,
        metrics={"rows": 150, "accuracy": 0.97},
        steps={"train": StepResult(status="succeeded", exit_code=0)},
    )
    assert done.metrics == {"rows": 150, "accuracy": 0.97} and type(done.metrics["rows"]) is int
    assert done.params == {"n": 1, "rate": 0.5} and type(done.params["n"]) is int
    assert done.steps == {"train": StepResult(status="succeeded", exit_code=0)}


# -------------------------------------------------------------------- shapes


def _methods(protocol: type) -> set[str]:
    return {
        name
        for klass in protocol.__mro__
        if klass not in (object, Protocol) and klass.__dict__.get("_is_protocol")
        for name, member in vars(klass).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


@pytest.mark.parametrize("name", PROTOCOLS)
def test_each_record_kind_has_a_narrow_protocol_that_the_sql_store_implements(name: str) -> None:
    protocol = getattr(store_package, name)
    methods = _methods(protocol)
    assert 2 <= len(methods) <= 12, sorted(methods)
    assert all(callable(getattr(SqlStore, method, None)) for method in methods)


def test_the_protocols_together_are_the_sql_store_and_no_method_is_in_two() -> None:
    kinds = [_methods(getattr(store_package, name)) for name in PROTOCOLS]
    every = set().union(*kinds)
    assert sum(len(kind) for kind in kinds) == len(every)
    public = {name for name, _ in inspect.getmembers(SqlStore, inspect.isfunction)}
    assert {name for name in public if not name.startswith("_")} == every


def test_a_keyword_a_method_does_not_take_or_one_it_needs_is_a_type_error(store: SqlStore) -> None:
    with pytest.raises(TypeError, match=r"create_run\(\) got unexpected keyword argument\(s\) colour"):
        store.create_run(model="m", ref="main", commit="c", cache_key="k", colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"add_approval\(\) missing required keyword argument\(s\) channel"):
        store.add_approval(  # type: ignore[call-arg]
            model="m", version=1, environment="production", user="carol", decision="approve"
        )
    with pytest.raises(TypeError, match="list_runs"):
        store.list_runs(branch="main")  # type: ignore[call-arg]
    assert store.list_runs() == [] and store.audit() == []


def test_no_record_goes_to_meta(store: SqlStore) -> None:
    store.save_pull_request(PULL)
    store.grant_ok_to_test(number=6, sha="a" * 40)
    store.mark_comment_handled(1, delivery_id="d")
    store.remember_github_id(CheckRunRef(REPO, "1" * 40, "iris"), 5)
    store.save_poll_cursor(PollCursor(listening_since=T0, comments_since=T0))
    store.save_slack_message(SlackMessage(model="iris", version=1, channel="C", ts="1"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM meta").scalar() == 0

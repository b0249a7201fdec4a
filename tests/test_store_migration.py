"""Upgrading a state directory written at schema revision 0003: nothing lost, ``meta`` keeps settings only.

Pins down that opening a store Flywheel wrote at 0003, with records of every
kind and every ``github:`` and ``slack.rollout:`` meta key family in the
formats that Flywheel wrote, migrates it to the newest revision and reads all
of it back through the narrow protocols: the old tables as they were, and
each meta family from its own table, its keys gone from ``meta``
(controller-wide settings stay). A value no writer of that family could have
written is left behind with one warning naming it, and stops nothing. The
GitHub forge, the trust gate and the Slack sender carry on where the 0003
Flywheel left off (the same sticky comment and check run, the same ok-to-test,
the same Slack message, no reply twice). A downgrade gives the keys back. A
database migrated by a newer Flywheel is still refused, untouched.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from github import Auth
from slack_sdk.web import WebClient
from sqlalchemy import Engine, insert, select, text

from controller.backends.forge import ReviewTarget
from controller.backends.forge.github import GitHubForge, GitHubSender, report_marker
from controller.backends.notify import RolloutEvent, event_to_json
from controller.backends.notify.slack import SlackSender
from controller.backends.store import (
    BranchPullRef,
    CheckRunRef,
    PollCursor,
    PullRequest,
    ReplyCommentRef,
    ReportCommentRef,
    SchemaTooNew,
    SlackMessage,
    StepResult,
    open_store,
)
from controller.backends.store.sql import SqlStore, alembic_config, schema_revision
from controller.backends.store.sql.tables import (
    approvals,
    audit_log,
    commit_statuses,
    inbox_events,
    meta,
    model_versions,
    outbox,
    reviews,
    rollouts,
    runs,
    serving,
)
from controller.clock import SYSTEM_CLOCK, Clock, FakeClock
from controller.engine.outbox import deliver_due
from controller.engine.trust import TrustGate, proposal_heads, pull_request_for
from controller.specs import Catalog
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import TOKEN as SLACK_TOKEN
from tests.fakes.slack_api import FakeSlack
from tests.store_0003 import (
    GOOD_PULL,
    open_pulls_value,
    pull_request_value,
    slack_value,
    state_at_0003,
    write_meta,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head() or ""  # the newest revision
NEWER = f"{int(HEAD) + 1:04d}"  # one this Flywheel does not know
REPO = "octo-org/models"
SHA1, SHA2 = "1" * 40, "2" * 40
FORK = {**GOOD_PULL, "number": 9, "head_ref": "main", "head_sha": SHA2, "author": "mallory", "fork": True}
CLOSED = {**GOOD_PULL, "number": 4, "head_ref": "old", "state": "closed", "merged": True}
SLACK_STATE: dict[str, Any] = {
    "model": "iris",
    "version": 1,
    "channel": "C0RELEASES",
    "ts": "1.000001",
    "replied": ["iris:v1:staging:rollout_started:-"],
    "kind": "rollout_started",
    "message": "iris v1 rollout started",
    "stage": "staging",
    "at": T0.isoformat(),
    "approvers": ["carol"],
    "metrics": {"accuracy": 0.97, "requests": 12},
}
SETTINGS = {"controller:repository": "file:///srv/models.git", "controller:release-branch": "main"}
COMMENT_ID = 3_000_000_001  # GitHub's comment ids no longer fit 32 bits
CHECK_ID = 20_000_000_002


def old_meta() -> dict[str, str]:
    """Every meta key family, as the 0003 Flywheel's writers left them."""
    return {
        **SETTINGS,
        "github:pr:6": pull_request_value(),
        "github:pr:9": pull_request_value(**FORK),
        "github:pr:4": pull_request_value(**CLOSED),
        "github:branch:tune": "6",
        "github:branch:old": "4",
        "github:open-pulls": open_pulls_value({6: False, 9: True}),
        "github:ok-to-test:9": SHA2,
        f"github:comment-handled:{COMMENT_ID}": "delivery-77",
        f"github:check:{REPO}:{SHA1}:iris": str(CHECK_ID),
        f"github:comment:{REPO}:6:iris": "501",
        f"github:reply:{REPO}:{COMMENT_ID}": "502",
        f"github:sender:pr:{REPO}:no-event-yet": "12",
        "github:poll:listening-since": "2024-05-01T11:00:00Z",
        "github:poll:comments-since": "2024-05-01T11:59:30Z",
        "slack.rollout:iris:v1": slack_value(SLACK_STATE),
    }


def fill_0003(engine: Engine, meta_values: dict[str, str]) -> None:
    """One record of every kind in the tables 0003 had, and ``meta_values``."""
    with engine.begin() as conn:
        conn.execute(
            insert(inbox_events).values(
                source="github", delivery_id="d-1", kind="push", payload={"ref": "refs/heads/main"},
                received_at=T0, attempts=0,
            )
        )  # fmt: skip
        conn.execute(
            insert(runs).values(
                model="iris", ref="main", commit=SHA1, cache_key="k1", status="succeeded", trigger="merge",
                steps={"train": {"status": "succeeded", "duration_seconds": 1.5, "cache_hit": False,
                                 "log_path": "l", "exit_code": 0}},
                metrics={"accuracy": 0.97, "rows": 150}, gates=[{"metric": "accuracy", "status": "passed"}],
                params={"C": 1.0}, data_fingerprints={"train": "sha256:aa"}, environment_hash="env1",
                artifact_path="/a/model", artifact_digest="sha256:bb", created_at=T0, reused_from=None,
                baseline_version=None,
            )
        )  # fmt: skip
        conn.execute(
            insert(model_versions).values(
                model="iris", number=1, content_id="sha256:cc", run_id=1, commit=SHA1,
                artifact_digest="sha256:bb", artifact_uri="/a/model", environment_hash="env1",
                data_fingerprints={"train": "sha256:aa"}, params={"C": 1.0}, metrics={"accuracy": 0.97},
                created_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(rollouts).values(
                model="iris", version=1, stages=["staging", "production"],
                stages_key='["staging","production"]', state="canary", stage_index=1, step_index=0,
                weight=10, analysis_failures=0, paused=False,
                revision=3, detail={"reason": "started"}, created_at=T0, updated_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(serving).values(environment="production", model="iris", version=1, weight=10, at=T0)
        )
        conn.execute(
            insert(approvals).values(
                model="iris", version=1, environment="production", user="carol", decision="approve",
                channel="slack", comment="lgtm", created_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(audit_log).values(at=T0, actor="carol", action="approve", model="iris", detail={"n": 1})
        )
        conn.execute(
            insert(outbox).values(
                destination="console", key="k", payload={"text": "hello"}, revision=2, attempts=1,
                created_at=T0, updated_at=T0, next_attempt_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(reviews).values(
                proposal="tune", model="iris", commit=SHA1, state="success", description="ok", body="report",
                updated_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(commit_statuses).values(
                proposal="tune", model="iris", commit=SHA1, state="success", description="ok", at=T0
            )
        )
    write_meta(engine, meta_values, at=T0)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """Here, a state directory a 0003 Flywheel left, with data; the shared ``store`` upgrades it."""
    engine = state_at_0003(tmp_path / "state")
    try:
        fill_0003(engine, old_meta())
    finally:
        engine.dispose()
    yield tmp_path / "state"


@pytest.fixture
def store_clock() -> Clock:
    """A day after the old Flywheel wrote its data."""
    return FakeClock(T0 + timedelta(days=1))


def meta_keys(store: SqlStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(meta.c.key)).scalars())


# ------------------------------------------------------------- reading back


@pytest.mark.unit
def test_every_record_of_0003_reads_back_after_the_upgrade(store: SqlStore) -> None:
    assert schema_revision(store.engine) == (HEAD,)
    event = store.get_event(1)
    assert (event.source, event.delivery_id, event.payload, event.received_at) == (
        "github", "d-1", {"ref": "refs/heads/main"}, T0,
    )  # fmt: skip
    run = store.get_run(1)
    assert run.steps == {"train": StepResult("succeeded", 1.5, False, "l", 0)}
    assert (run.metrics, run.gates, run.params, run.artifact_digest) == (
        {"accuracy": 0.97, "rows": 150}, [{"metric": "accuracy", "status": "passed"}], {"C": 1.0},
        "sha256:bb",
    )  # fmt: skip
    assert store.find_successful_run("k1") == run
    version = store.get_version("iris", 1)
    assert (version.content_id, version.run_id, version.created_at) == ("sha256:cc", 1, T0)
    rollout = store.get_rollout(1)
    assert (rollout.stages, rollout.environment, rollout.revision, rollout.paused) == (
        ("staging", "production"), "production", 3, False,
    )  # fmt: skip
    assert store.served_at(environment="production", model="iris", at=T0) == [(1, 10)]
    (approval,) = store.approvals_for(model="iris", version=1, environment="production")
    assert (approval.user, approval.channel, approval.comment) == ("carol", "slack", "lgtm")
    assert [(e.actor, e.detail) for e in store.audit()] == [("carol", {"n": 1})]
    message = store.get_message(1)
    assert (message.key, message.revision, message.attempts) == ("k", 2, 1)
    assert [r.body for r in store.reviews(proposal="tune")] == ["report"]
    assert [s.state for s in store.commit_statuses(proposal="tune", model="iris")] == ["success"]


@pytest.mark.unit
def test_every_meta_family_moves_to_its_table_and_leaves_meta(store: SqlStore) -> None:
    assert store.pull_request(6) == PullRequest(**GOOD_PULL)
    assert store.pull_request(9) == PullRequest(**FORK)
    assert store.pull_request(4) == PullRequest(**CLOSED)
    assert [pull.number for pull in store.open_pull_requests()] == [6, 9]  # the open list was their state
    assert (store.pull_number_for_branch("tune"), store.pull_number_for_branch("old")) == (6, 4)
    assert store.pull_number_for_branch("main") is None  # a fork's branch maps nothing
    grant = store.ok_to_test(9)
    assert grant is not None and (grant.sha, grant.granted_at) == (SHA2, T0)  # when meta last changed it
    assert store.ok_to_test(6) is None
    assert store.comment_handled(COMMENT_ID) and not store.comment_handled(COMMENT_ID + 1)
    assert store.github_id(CheckRunRef(REPO, SHA1, "iris")) == CHECK_ID
    assert store.github_id(ReportCommentRef(REPO, 6, "iris")) == 501
    assert store.github_id(ReplyCommentRef(REPO, COMMENT_ID)) == 502
    assert store.github_id(BranchPullRef(REPO, "no-event-yet")) == 12
    assert store.poll_cursor() == PollCursor(
        listening_since=datetime(2024, 5, 1, 11, 0, tzinfo=UTC),
        comments_since=datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC),
    )
    reference = {"model", "version", "channel", "ts", "replied"}
    assert store.slack_message(model="iris", version=1) == SlackMessage(
        model="iris",
        version=1,
        channel="C0RELEASES",
        ts="1.000001",
        view={name: value for name, value in SLACK_STATE.items() if name not in reference},
        replied=("iris:v1:staging:rollout_started:-",),
    )
    assert meta_keys(store) == set(SETTINGS)  # controller-wide settings only
    assert store.get_meta("controller:repository") == SETTINGS["controller:repository"]


@pytest.mark.unit
def test_the_github_side_carries_on_where_0003_left_off(store: SqlStore) -> None:
    catalog = Catalog(models={}, policies={}, environments={})
    gate = TrustGate(store, lambda: catalog)
    assert gate.admits("pull/9/head", SHA2)[0]  # the ok-to-test given before the upgrade
    assert not gate.admits("pull/9/head", SHA1)[0]
    assert pull_request_for(store, "old") == (True, PullRequest(**CLOSED))

    class Repo:
        def branches(self) -> dict[str, str]:
            return {"tune": GOOD_PULL["head_sha"]}

        def ref_target(self, ref: str) -> str | None:
            return SHA2 if ref == "refs/pull/9/head" else None

    assert proposal_heads(Repo(), store) == {"tune": GOOD_PULL["head_sha"], "pull/9/head": SHA2}  # type: ignore[arg-type]


@pytest.mark.integration
def test_the_github_sender_edits_the_comment_and_check_run_of_0003(tmp_path: Path) -> None:
    with FakeGitHub(repository=REPO, token="ghp_test") as fake:
        fake.add_pull(6, head_ref="tune", head_sha=SHA1)
        comment = fake.add_comment(6, f"{report_marker('iris')}\nold", login="flywheel-bot")
        _, _, check = fake._create_check_run({"name": "flywheel/iris", "head_sha": SHA1})
        engine = state_at_0003(tmp_path)
        old = {
            "github:pr:6": pull_request_value(head_sha=SHA1),
            "github:branch:tune": "6",
            f"github:comment:{REPO}:6:iris": str(comment["id"]),
            f"github:check:{REPO}:{SHA1}:iris": str(check["id"]),
        }
        write_meta(engine, old, at=T0)
        engine.dispose()
        store = open_store(tmp_path, clock=SYSTEM_CLOCK)
        sender = GitHubSender(
            store,
            auth=Auth.Token("ghp_test"),
            base_url=fake.api_url,
            checks="check-runs",
            seconds_between_requests=None,
            seconds_between_writes=None,
            clock=SYSTEM_CLOCK,
        )
        try:
            forge = GitHubForge(store, REPO)
            forge.publish_report(ReviewTarget("tune", "iris", SHA1), f"{report_marker('iris')}\nnew")
            forge.set_status(ReviewTarget("tune", "iris", SHA1), "success", "passed")
            assert (
                deliver_due(store, {"github": sender}, now=SYSTEM_CLOCK.now() + timedelta(days=1)).sent == 2
            )
        finally:
            sender.close()
            store.close()
        writes = [(r.method, r.path) for r in fake.writes()]
        assert fake.comments[comment["id"]]["body"].endswith("new")
        assert fake.check_runs[check["id"]]["conclusion"] == "success"
    # the ids remembered at 0003 were used: nothing created, no pull request looked up
    assert writes == [
        ("PATCH", f"/repos/{REPO}/issues/comments/{comment['id']}"),
        ("PATCH", f"/repos/{REPO}/check-runs/{check['id']}"),
    ]
    assert not [r for r in fake.requests if r.path.endswith("/pulls")]


@pytest.mark.integration
def test_the_slack_sender_edits_the_message_of_0003_and_never_replies_twice(tmp_path: Path) -> None:
    with FakeSlack() as slack:
        posted = WebClient(token=SLACK_TOKEN, base_url=slack.api_url).chat_postMessage(
            channel="#ml-releases", text="iris v1"
        )
        engine = state_at_0003(tmp_path)
        state = {**SLACK_STATE, "channel": posted["channel"], "ts": posted["ts"]}
        write_meta(engine, {"slack.rollout:iris:v1": slack_value(state)}, at=T0)
        engine.dispose()
        store = open_store(tmp_path, clock=SYSTEM_CLOCK)
        try:
            sender = SlackSender(token=SLACK_TOKEN, store=store, base_url=slack.api_url)
            started = RolloutEvent("rollout_started", "iris", 1, "staging", "iris v1 rollout started", T0)
            promoted = RolloutEvent(
                "promoted", "iris", 1, "staging", "iris v1 promoted", T0 + timedelta(hours=1)
            )
            for number, event in enumerate((started, promoted)):
                payload = {"event": event_to_json(event), "target": "#ml-releases"}
                store.enqueue(destination="slack", key=f"e{number}", payload=payload)
            assert deliver_due(store, {"slack": sender}, now=SYSTEM_CLOCK.now() + timedelta(days=1)).sent == 2
        finally:
            store.close()
        (parent,) = slack.parents()
        assert parent.ts == posted["ts"] and parent.edits == 2
        assert [reply.text for reply in slack.replies(parent)] == [
            ":tada: promoted — staging: iris v1 promoted"
        ]


# -------------------------------------------------------- what is left behind


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("github:pr:6", "{not json"),
        ("github:pr:6", "[]"),
        ("github:pr:6", pull_request_value(number=False)),
        ("github:pr:6", pull_request_value(number=7)),  # another pull request's record
        ("github:pr:6", pull_request_value(fork="no")),
        ("github:pr:6", pull_request_value(head_sha=None)),
        ("github:pr:6", json.dumps({k: v for k, v in GOOD_PULL.items() if k != "head_sha"})),
        ("github:pr:6", "[" * 100_000),
        ("github:pr:False", pull_request_value(number=False)),
        ("github:branch:tune", "six"),
        (f"github:comment:{REPO}:7:iris", ""),  # an id lost to a crash
        (f"github:check:{REPO}:{SHA1}:iris", "not-an-id"),
        ("github:poll:comments-since", "yesterday"),
        ("slack.rollout:iris:v1", "{"),
    ],
    ids=lambda value: value[:30],
)
def test_a_malformed_value_is_left_behind_with_one_warning(
    tmp_path: Path, key: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = state_at_0003(tmp_path)
    extra = {"github:poll:listening-since": "2024-05-01T11:00:00Z"} if "poll" in key else {}
    write_meta(engine, {key: value, **extra}, at=T0)
    engine.dispose()
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        store = open_store(tmp_path, clock=SYSTEM_CLOCK)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"the stored {key[:200]}:" in warnings[0]
        assert meta_keys(store) == set()
        assert store.pull_request(6) is None and store.pull_request(0) is None
        assert store.open_pull_requests() == []
        assert store.pull_number_for_branch("tune") is None
        assert store.github_id(ReportCommentRef(REPO, 7, "iris")) is None
        assert store.github_id(CheckRunRef(REPO, SHA1, "iris")) is None
        assert store.poll_cursor() is None  # the next poll starts listening again
        assert store.slack_message(model="iris", version=1) is None
        # and the next record is written as usual
        assert store.save_pull_request(PullRequest(**GOOD_PULL)) == store.pull_request(6)
    finally:
        store.close()


@pytest.mark.unit
@pytest.mark.parametrize(
    "garbage", ["{", "[1, 2]", "null", '{"False": false, "6": true, "7": "yes", "-1": false}']
)
def test_the_open_list_is_the_records_state_whatever_it_held(tmp_path: Path, garbage: str) -> None:
    engine = state_at_0003(tmp_path)
    write_meta(
        engine,
        {
            "github:open-pulls": garbage,
            "github:pr:6": pull_request_value(fork=True),
            "github:pr:8": pull_request_value(number=8, head_ref="eight"),
        },
        at=T0,
    )
    engine.dispose()
    store = open_store(tmp_path, clock=SYSTEM_CLOCK)
    try:
        assert {pull.number: pull.fork for pull in store.open_pull_requests()} == {6: True, 8: False}
        assert meta_keys(store) == set()
    finally:
        store.close()


# ----------------------------------------------------------------- revisions


@pytest.mark.unit
def test_a_downgrade_gives_the_keys_back_and_the_upgrade_takes_them_again(
    store: SqlStore, state: Path
) -> None:
    before = {
        "pull": store.pull_request(9),
        "grant": store.ok_to_test(9),
        "cursor": store.poll_cursor(),
        "slack": store.slack_message(model="iris", version=1),
        "reply": store.github_id(ReplyCommentRef(REPO, COMMENT_ID)),
    }
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    expected = old_meta()
    with store.engine.connect() as conn:
        restored = {str(key): str(value) for key, value in conn.execute(select(meta.c.key, meta.c.value))}
    assert set(restored) == set(expected)
    for key, value in expected.items():
        if key != "slack.rollout:iris:v1":
            assert restored[key] == value, key
    assert restored["slack.rollout:iris:v1"] == slack_value(SLACK_STATE)
    store.close()

    again = open_store(state, clock=SYSTEM_CLOCK)
    try:
        assert {
            "pull": again.pull_request(9),
            "grant": again.ok_to_test(9),
            "cursor": again.poll_cursor(),
            "slack": again.slack_message(model="iris", version=1),
            "reply": again.github_id(ReplyCommentRef(REPO, COMMENT_ID)),
        } == before
    finally:
        again.close()


@pytest.mark.unit
def test_a_store_migrated_by_a_newer_flywheel_is_refused_and_left_alone(store: SqlStore, state: Path) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{NEWER}'"))
    store.close()
    with pytest.raises(SchemaTooNew, match=rf"{NEWER}.*newer than this Flywheel knows.*up to {HEAD}"):
        open_store(state, clock=SYSTEM_CLOCK)
    with sqlite3.connect(state / "state.db") as db:  # nothing downgraded, nothing undone
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (NEWER,)
        assert db.execute("SELECT count(*) FROM pull_requests").fetchone() == (3,)

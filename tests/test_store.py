"""What the state store guarantees to the engine, the webhook service and the CLI.

Pins down: inbox deliveries are deduplicated by (source, delivery id), claimed
once, and reclaimable after a crashed worker's lease expires; a transaction
that fails midway leaves nothing behind; runs are found by cache key and
listed newest first; model versions are numbered 1, 2, ... per model, are
idempotent per run and cannot be changed or deleted even with raw SQL;
rollouts update by compare-and-set; the audit log is append-only; the outbox
never duplicates a key, lets the newest payload win, and follows the
due → failed → due → sent flow; and the serving history answers "what served
this environment at time T".
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from controller.backends.store import (
    Conflict,
    NotFound,
    Run,
    StepResult,
    state_url,
)
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK, Clock, FakeClock
from tests.fixtures import T0

pytestmark = pytest.mark.unit


@pytest.fixture
def store_clock(clock: FakeClock) -> Clock:
    """The store here stamps with the test's fake clock."""
    return clock


def _succeeded_run(store: SqlStore, *, model: str = "churn", commit: str = "c1") -> Run:
    run = store.create_run(model=model, ref="main", commit=commit, cache_key=f"key-{model}-{commit}")
    return store.update_run(run.id, status="succeeded")


def _register(store: SqlStore, run: Run) -> int:
    return store.register_version(
        model=run.model,
        run_id=run.id,
        commit=run.commit,
        artifact_digest=f"sha256:{run.commit}",
        artifact_uri=f"file:///artifacts/{run.id}",
        environment_hash="env1",
    ).number


# ---------------------------------------------------------------------- inbox


def test_duplicate_delivery_is_dropped(store: SqlStore) -> None:
    assert store.put_event(source="github", delivery_id="d-1", kind="push", payload={"after": "a"})
    assert not store.put_event(source="github", delivery_id="d-1", kind="push", payload={"after": "b"})
    # the same id from another source is a different delivery
    assert store.put_event(source="slack", delivery_id="d-1", kind="block_actions", payload={})

    events = store.claim_events(limit=10, worker="w1")
    assert [(e.source, e.delivery_id, e.payload) for e in events] == [
        ("github", "d-1", {"after": "a"}),
        ("slack", "d-1", {}),
    ]


def test_claim_complete_and_lease_expiry(store: SqlStore, clock: FakeClock) -> None:
    for n in range(3):
        store.put_event(source="poll", delivery_id=f"p{n}", kind="push", payload={"n": n})

    first = store.claim_events(limit=2, worker="w1", lease_seconds=60)
    assert [e.payload["n"] for e in first] == [0, 1]
    assert all(e.claimed_by == "w1" and e.attempts == 1 for e in first)

    # claimed events are not handed out again while the lease holds
    second = store.claim_events(limit=10, worker="w2", lease_seconds=60)
    assert [e.payload["n"] for e in second] == [2]
    assert store.claim_events(limit=10, worker="w3") == []

    store.complete_event(first[0].id)
    store.complete_event(second[0].id, error="spec invalid")
    assert store.get_event(second[0].id).error == "spec invalid"

    # w1 crashed holding event 1: once its lease runs out another worker takes it over
    clock.advance(61)
    reclaimed = store.claim_events(limit=10, worker="w3")
    assert [(e.payload["n"], e.claimed_by, e.attempts) for e in reclaimed] == [(1, "w3", 2)]
    store.complete_event(reclaimed[0].id)
    clock.advance(3600)
    assert store.claim_events(limit=10, worker="w4") == []


def test_concurrent_workers_never_claim_the_same_event(tmp_path: Path) -> None:
    stores = [SqlStore(state_url(tmp_path), clock=SYSTEM_CLOCK) for _ in range(3)]
    try:
        for n in range(60):
            stores[0].put_event(source="poll", delivery_id=str(n), kind="push", payload={})
        claimed: list[list[int]] = [[] for _ in stores]

        def work(index: int) -> None:
            while batch := stores[index].claim_events(limit=4, worker=f"w{index}"):
                claimed[index].extend(event.id for event in batch)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        every = [event_id for ids in claimed for event_id in ids]
        assert sorted(every) == sorted(set(every)) and len(every) == 60
    finally:
        for opened in stores:
            opened.close()


def test_pruned_events_no_longer_deduplicate(store: SqlStore, clock: FakeClock) -> None:
    store.put_event(source="github", delivery_id="old", kind="push", payload={})
    store.put_event(source="github", delivery_id="open", kind="push", payload={})
    [old, _open] = store.claim_events(limit=2, worker="w")
    store.complete_event(old.id)
    clock.advance(86400)
    assert store.prune_events(before=clock.now()) == 1  # the unfinished one is kept
    assert store.put_event(source="github", delivery_id="old", kind="push", payload={})
    assert not store.put_event(source="github", delivery_id="open", kind="push", payload={})


def test_complete_unknown_event_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.complete_event(404)


# ---------------------------------------------------------------- transaction


def test_failed_transaction_leaves_nothing(store: SqlStore) -> None:
    run = _succeeded_run(store)
    with pytest.raises(RuntimeError, match="crash"), store.transaction():
        store.put_event(source="timer", delivery_id="t1", kind="schedule", payload={})
        store.register_version(
            model="churn",
            run_id=run.id,
            commit="c1",
            artifact_digest="d",
            artifact_uri="u",
            environment_hash="e",
        )
        store.append_audit(actor="controller", action="register", model="churn", version=1)
        store.enqueue(destination="github", key="comment:1", payload={"body": "registered"})
        raise RuntimeError("crash")

    assert store.list_versions("churn") == []
    assert store.audit() == []
    assert store.due_messages() == []
    assert store.put_event(source="timer", delivery_id="t1", kind="schedule", payload={})


def test_transaction_commits_all_together_and_nests(store: SqlStore) -> None:
    with store.transaction():
        run = store.create_run(model="m", ref="pr/1", commit="c", cache_key="k")
        with store.transaction():  # joins the outer one
            store.update_run(run.id, status="running")
        store.set_meta("heads", "{}")
    assert store.get_run(run.id).status == "running"
    assert store.get_meta("heads") == "{}"


# ----------------------------------------------------------------------- runs


def test_run_lifecycle_and_lookups(store: SqlStore, clock: FakeClock) -> None:
    run = store.create_run(
        model="churn",
        ref="pr/7",
        commit="abc",
        cache_key="k1",
        trigger="proposal",
        params={"C": 1.0},
        data_fingerprints={"train": "sha256:aa"},
        environment_hash="env1",
    )
    assert run.status == "queued" and run.steps == {} and run.created_at == T0
    assert not run.finished

    store.update_run(run.id, status="running", started_at=clock.now())
    store.record_step(run.id, step="train", result=StepResult(status="succeeded", duration_seconds=1.5))
    store.record_step(
        run.id,
        step="evaluate",
        result=StepResult(status="succeeded", cache_hit=True, exit_code=0, log_path="l"),
    )
    done = store.update_run(
        run.id,
        status="succeeded",
        metrics={"auc": 0.91},
        gates=[{"metric": "auc", "status": "passed"}],
        artifact_path="/a/model",
        artifact_digest="sha256:bb",
        finished_at=clock.advance(10),
    )
    assert done.finished
    assert done.steps == {
        "train": StepResult(status="succeeded", duration_seconds=1.5),
        "evaluate": StepResult(status="succeeded", cache_hit=True, exit_code=0, log_path="l"),
    }
    assert done.metrics == {"auc": 0.91} and done.params == {"C": 1.0}
    assert done.finished_at == T0 + timedelta(seconds=10)
    assert store.get_run(run.id) == done

    assert store.find_successful_run("k1") == done
    assert store.find_successful_run("nope") is None

    later = store.create_run(model="churn", ref="pr/7", commit="def", cache_key="k2")
    store.create_run(model="churn", ref="main", commit="abc", cache_key="k1")
    store.create_run(model="fraud", ref="pr/7", commit="abc", cache_key="k3")
    assert store.latest_run(model="churn", ref="pr/7") == later
    assert [r.id for r in store.list_runs(model="churn", ref="pr/7")] == [later.id, run.id]
    assert len(store.list_runs(model="churn")) == 3
    assert len(store.list_runs(limit=2)) == 2
    assert [r.id for r in store.list_runs(status="succeeded")] == [run.id]


def test_update_run_rejects_unknown_run_and_bad_status(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.update_run(99, status="running")
    run = store.create_run(model="m", ref="main", commit="c", cache_key="k")
    with pytest.raises(IntegrityError):
        store.update_run(run.id, status="exploded")  # type: ignore[arg-type]


def test_naive_times_are_refused(store: SqlStore) -> None:
    run = store.create_run(model="m", ref="main", commit="c", cache_key="k")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.update_run(run.id, started_at=datetime(2024, 1, 1))


# ------------------------------------------------------------- model versions


def test_versions_are_numbered_in_order_per_model_and_idempotent_per_run(store: SqlStore) -> None:
    a1, a2 = _succeeded_run(store, commit="a1"), _succeeded_run(store, commit="a2")
    b1 = _succeeded_run(store, model="fraud", commit="b1")

    assert _register(store, a1) == 1
    assert _register(store, b1) == 1
    assert _register(store, a2) == 2
    again = store.register_version(
        model="churn",
        run_id=a1.id,
        commit="ignored",
        artifact_digest="ignored",
        artifact_uri="ignored",
        environment_hash="ignored",
    )
    assert again == store.get_version("churn", 1)
    assert again.commit == "a1"

    assert [v.number for v in store.list_versions("churn")] == [1, 2]
    assert store.list_models() == ["churn", "fraud"]
    latest = store.latest_version("churn")
    assert latest is not None and latest.run_id == a2.id
    assert store.latest_version("nothing") is None
    assert latest.content_id.startswith("sha256:") and latest.content_id != again.content_id
    with pytest.raises(NotFound):
        store.get_version("churn", 3)


def test_versions_cannot_be_changed_or_deleted_even_with_raw_sql(store: SqlStore) -> None:
    _register(store, _succeeded_run(store))
    for statement in (
        "UPDATE model_versions SET artifact_uri = 'evil' WHERE model = 'churn'",
        "DELETE FROM model_versions",
    ):
        with pytest.raises(IntegrityError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert store.get_version("churn", 1).artifact_uri.startswith("file:///artifacts/")


def test_version_needs_an_existing_run(store: SqlStore) -> None:
    with pytest.raises(IntegrityError):
        store.register_version(
            model="m", run_id=12345, commit="c", artifact_digest="d", artifact_uri="u", environment_hash="e"
        )


# ------------------------------------------------------------------- rollouts


def test_rollout_compare_and_set(store: SqlStore, clock: FakeClock) -> None:
    _register(store, _succeeded_run(store))
    rollout = store.create_rollout(
        model="churn", version=1, stages=("staging", "production"), state="pending"
    )
    assert (rollout.revision, rollout.stage_index, rollout.weight, rollout.paused) == (1, 0, 0, False)
    assert rollout.environment == "staging" and rollout.active
    # creating the same rollout again hands back the one that exists
    assert (
        store.create_rollout(model="churn", version=1, stages=["staging", "production"], state="x") == rollout
    )

    clock.advance(5)
    moved = store.update_rollout(rollout.id, expected_revision=1, state="canary", weight=10, stage_index=1)
    assert (moved.revision, moved.state, moved.weight, moved.environment) == (2, "canary", 10, "production")
    assert moved.updated_at == T0 + timedelta(seconds=5) and moved.created_at == T0

    with pytest.raises(Conflict, match="expected revision 1, found 2"):
        store.update_rollout(rollout.id, expected_revision=1, weight=50)
    assert store.get_rollout(rollout.id).weight == 10
    with pytest.raises(NotFound):
        store.update_rollout(999, expected_revision=1, weight=50)

    assert store.active_rollouts() == [moved]
    finished = store.update_rollout(
        rollout.id, expected_revision=2, state="succeeded", finished_at=clock.now(), detail={"reason": "done"}
    )
    assert store.active_rollouts() == []
    assert store.rollouts_for("churn") == [finished]
    assert finished.detail == {"reason": "done"} and not finished.active


# -------------------------------------------------------------------- serving


def test_served_at_answers_for_times_between_changes(store: SqlStore) -> None:
    _register(store, _succeeded_run(store, commit="a"))
    _register(store, _succeeded_run(store, commit="b"))
    t = [T0 + timedelta(hours=h) for h in range(5)]

    store.record_serving(environment="production", model="churn", version=1, weight=100, at=t[0])
    store.record_traffic(environment="production", model="churn", weights={1: 90, 2: 10}, at=t[1])
    store.record_traffic(environment="production", model="churn", weights={2: 100}, at=t[2])
    store.record_traffic(environment="staging", model="churn", weights={2: 100}, at=t[0])

    def prod(at: datetime) -> list[tuple[int, int]]:
        return store.served_at(environment="production", model="churn", at=at)

    assert prod(t[0] - timedelta(seconds=1)) == []
    assert prod(t[0]) == [(1, 100)]
    assert prod(t[0] + timedelta(minutes=30)) == [(1, 100)]
    assert prod(t[1] + timedelta(minutes=30)) == [(1, 90), (2, 10)]
    assert prod(t[3]) == [(2, 100)]
    assert [
        (r.version, r.weight) for r in store.serving_history(environment="production", model="churn")
    ] == [
        (1, 100),
        (1, 90),
        (2, 10),
        (1, 0),
        (2, 100),
    ]
    with pytest.raises(ValueError, match="percentage"):
        store.record_serving(environment="production", model="churn", version=1, weight=101)


def test_served_in_is_served_at_of_every_model_of_an_environment(store: SqlStore) -> None:
    _register(store, _succeeded_run(store, commit="a"))
    _register(store, _succeeded_run(store, commit="b"))
    _register(store, _succeeded_run(store, model="fraud", commit="c"))
    _register(store, _succeeded_run(store, model="spam", commit="d"))
    t = [T0 + timedelta(hours=h) for h in range(3)]
    store.record_traffic(environment="production", model="churn", weights={1: 90, 2: 10}, at=t[0])
    store.record_traffic(environment="production", model="churn", weights={2: 100}, at=t[1])
    store.record_traffic(environment="production", model="fraud", weights={1: 100}, at=t[1])
    store.record_traffic(environment="production", model="fraud", weights={}, at=t[2])
    store.record_traffic(environment="staging", model="spam", weights={1: 100}, at=t[0])
    for at in (t[0], t[1], t[2]):
        served = store.served_in(environment="production", at=at)
        assert served == {
            model: store.served_at(environment="production", model=model, at=at)
            for model in ("churn", "fraud") if store.served_at(environment="production", model=model, at=at)
        }
    assert store.served_in(environment="production", at=t[1]) == {"churn": [(2, 100)], "fraud": [(1, 100)]}
    assert store.served_in(environment="production", at=t[2]) == {"churn": [(2, 100)]}


# ------------------------------------------------------------------ approvals


def test_approvals_are_bound_to_version_and_environment(store: SqlStore, clock: FakeClock) -> None:
    _register(store, _succeeded_run(store, commit="a"))
    _register(store, _succeeded_run(store, commit="b"))
    first = store.add_approval(
        model="churn",
        version=1,
        environment="production",
        user="alice",
        decision="approve",
        channel="slack",
        comment="lgtm",
        expires_at=T0 + timedelta(hours=1),
    )
    store.add_approval(
        model="churn", version=2, environment="production", user="bob", decision="approve", channel="cli"
    )
    store.add_approval(
        model="churn", version=1, environment="staging", user="bob", decision="reject", channel="github"
    )
    found = store.approvals_for(model="churn", version=1, environment="production")
    assert found == [first]
    assert first.created_at == T0 and first.valid_at(T0) and not first.valid_at(T0 + timedelta(hours=2))
    with pytest.raises(IntegrityError):  # approvals are for registered versions only
        store.add_approval(
            model="churn", version=9, environment="production", user="x", decision="approve", channel="cli"
        )


# ---------------------------------------------------------------------- audit


def test_audit_log_is_append_only(store: SqlStore, clock: FakeClock) -> None:
    store.append_audit(actor="controller", action="run.started", model="churn", detail={"run": 1})
    clock.advance(60)
    entry = store.append_audit(actor="alice", action="approve", model="churn", version=1, environment="prod")
    store.append_audit(actor="controller", action="poll", detail={})

    assert [e.action for e in store.audit()] == ["run.started", "approve", "poll"]
    assert [e.action for e in store.audit(model="churn")] == ["run.started", "approve"]
    assert store.audit(since=T0 + timedelta(seconds=30), model="churn") == [entry]
    assert [e.action for e in store.audit(limit=2)] == ["approve", "poll"]  # the newest two, oldest first

    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(IntegrityError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert len(store.audit()) == 3


# --------------------------------------------------------------------- outbox


def test_outbox_key_never_duplicates_and_newest_payload_wins(store: SqlStore, clock: FakeClock) -> None:
    first = store.enqueue(destination="github", key="pr/7:sticky", payload={"body": "training..."})
    clock.advance(1)
    second = store.enqueue(destination="github", key="pr/7:sticky", payload={"body": "auc 0.91"})
    assert second.id == first.id and second.revision == 2
    due = store.due_messages()
    assert [(m.key, m.payload) for m in due] == [("pr/7:sticky", {"body": "auc 0.91"})]

    # the sender delivered revision 2 while a newer revision was being queued: it stays due
    store.enqueue(destination="github", key="pr/7:sticky", payload={"body": "auc 0.92"})
    assert not store.mark_sent(first.id, revision=2)
    assert store.due_messages()[0].payload == {"body": "auc 0.92"}
    assert store.mark_sent(first.id, revision=3)
    assert store.due_messages() == []

    # replaying the same content after a crash sends nothing; new content is due again
    assert store.enqueue(destination="github", key="pr/7:sticky", payload={"body": "auc 0.92"}).sent_at
    assert store.due_messages() == []
    store.enqueue(destination="github", key="pr/7:sticky", payload={"body": "auc 0.93"})
    assert [m.revision for m in store.due_messages()] == [4]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar() == 1

    with pytest.raises(ValueError, match="belongs to destination"):
        store.enqueue(destination="slack", key="pr/7:sticky", payload={})


def test_outbox_due_failed_sent_flow(store: SqlStore, clock: FakeClock) -> None:
    message = store.enqueue(destination="slack", key="approval:churn:1:prod", payload={"text": "approve?"})
    other = store.enqueue(destination="slack", key="other", payload={"text": "hi"})
    assert [m.id for m in store.due_messages(limit=1)] == [message.id]

    store.mark_failed(message.id, error="503", retry_at=clock.now() + timedelta(seconds=30))
    assert [m.id for m in store.due_messages()] == [other.id]
    later = clock.now() + timedelta(seconds=30)
    [_, retry] = store.due_messages(now=later)  # by due time: "other" has waited longest
    assert retry.id == message.id and retry.attempts == 1 and retry.last_error == "503"

    assert store.mark_sent(message.id)
    sent = store.get_message(message.id)
    assert sent.sent_at == T0 and sent.next_attempt_at is None
    assert [m.id for m in store.due_messages(now=later)] == [other.id]

    store.mark_failed(other.id, error="channel_not_found", retry_at=None)  # give up
    assert store.due_messages(now=later + timedelta(days=1)) == []
    with pytest.raises(NotFound):
        store.mark_sent(999)


# ----------------------------------------------------------------------- meta


def test_meta_set_and_overwrite(store: SqlStore) -> None:
    assert store.get_meta("poll:heads") is None
    store.set_meta("poll:heads", '{"main": "a"}')
    store.set_meta("poll:heads", '{"main": "b"}')
    assert store.get_meta("poll:heads") == '{"main": "b"}'

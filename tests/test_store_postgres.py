"""The state store on a real PostgreSQL: the same contract as on SQLite, the same migrations, real row locks.

Pins down that the store's contract tests that exercise SQL (inbox, runs,
versions, rollouts, approvals, audit log, outbox and its order, GitHub and
Slack records) pass on PostgreSQL unchanged: they are imported from their
modules and run here with ``store`` opened on a fresh PostgreSQL database
(:mod:`tests.postgres`); that the Alembic migrations 0001..0007 go up one by
one, down to nothing and up again, and leave exactly the tables the code
describes; that two stores on two engines claiming the same inbox events
never both get one (``FOR UPDATE SKIP LOCKED``), and queueing the same
outbox keys at once make one message of each (the outbox has no claim: only
the leader delivers it, :mod:`controller.engine.leadership`);
that the SQLite-only parts of state integrity (the WAL checkpoint, the
audit mark file, ``quick_check``) step aside while writability is still
proven; and that with ``FLYWHEEL_DATABASE_URL`` the commands read the state
from that database, and an unreachable one is one line naming the variable,
never the password.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

from controller.backends.store import SchemaTooNew, open_store
from controller.backends.store.integrity import StateNotWritable, verify_state
from controller.backends.store.sql import SqlStore, alembic_config, metadata, schema_revision
from controller.cli import main
from controller.clock import SYSTEM_CLOCK, Clock, FakeClock
from controller.settings import ENV_DATABASE_URL
from tests.test_outbox_doubt import (  # noqa: F401 - the contract tests, run again here on PostgreSQL
    test_a_failed_attempt_leaves_the_message_in_doubt,
    test_a_payload_replaced_after_it_was_sent_is_not_in_doubt,
    test_a_send_the_store_never_heard_of_comes_back_in_doubt,
    test_the_attempt_is_on_record_before_the_sender_is_called,
)
from tests.test_outbox_order import (  # noqa: F401
    test_a_message_given_up_on_holds_nothing_back,
    test_a_message_in_backoff_holds_back_its_own_key_only,
    test_a_pause_only_grows,
    test_a_paused_destination_has_nothing_due_until_the_pause_ends,
    test_only_the_destinations_asked_for,
    test_only_the_first_undelivered_message_of_an_ordering_key_is_due,
    test_the_ordering_key_defaults_to_the_key_and_is_kept_when_the_payload_is_replaced,
)
from tests.test_store import (  # noqa: F401
    test_approvals_are_bound_to_version_and_environment,
    test_audit_log_is_append_only,
    test_claim_complete_and_lease_expiry,
    test_complete_unknown_event_is_not_found,
    test_duplicate_delivery_is_dropped,
    test_failed_transaction_leaves_nothing,
    test_meta_set_and_overwrite,
    test_naive_times_are_refused,
    test_outbox_due_failed_sent_flow,
    test_outbox_key_never_duplicates_and_newest_payload_wins,
    test_pruned_events_no_longer_deduplicate,
    test_rollout_compare_and_set,
    test_run_lifecycle_and_lookups,
    test_served_at_answers_for_times_between_changes,
    test_transaction_commits_all_together_and_nests,
    test_update_run_rejects_unknown_run_and_bad_status,
    test_version_needs_an_existing_run,
    test_versions_are_numbered_in_order_per_model_and_idempotent_per_run,
    test_versions_cannot_be_changed_or_deleted_even_with_raw_sql,
)
from tests.test_store_records import (  # noqa: F401
    test_a_comment_is_handled_once,
    test_a_newer_event_replaces_the_record_and_an_older_one_does_not,
    test_a_slack_message_reads_back_as_saved,
    test_github_ids_are_kept_per_kind_of_thing_and_replaced_in_place,
    test_no_record_goes_to_meta,
    test_ok_to_test_covers_one_commit_and_a_new_one_replaces_it,
    test_only_a_branch_of_this_repository_maps_to_its_pull_request,
    test_the_open_pull_requests_are_those_last_recorded_open,
    test_the_poll_cursor_is_one_row,
    test_values_read_back_as_written,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store_clock(clock: FakeClock) -> Clock:
    """The contract tests here stamp with the test's fake clock, as in their own modules."""
    return clock


@pytest.fixture
def store(pg_url: str, store_clock: Clock) -> Iterator[SqlStore]:
    """The store on a fresh PostgreSQL database (created and migrated), closed after the test."""
    opened = open_store(pg_url, clock=store_clock)
    yield opened
    opened.close()


# ----------------------------------------------------------------- migrations


def test_the_migrations_go_up_one_by_one_down_to_nothing_and_up_again(pg_url: str) -> None:
    config = alembic_config()
    revisions = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions()][::-1]
    assert revisions[0] == "0001" and len(revisions) >= 7
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        for target in [*revisions, "base", "head"]:
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                if target == "base":
                    command.downgrade(config, "base")
                else:
                    command.upgrade(config, target)
            with engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_heads()
            assert current == (() if target == "base" else (revisions[-1] if target == "head" else target,))
            if target == "base":
                assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_the_tables_the_code_describes_are_the_ones_the_migrations_make(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert [d for d in differences if not (isinstance(d, tuple) and d[0] == "remove_index")] == []
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert schema_revision(store.engine) == tuple(heads)


def test_reopening_migrates_nothing_and_a_newer_schema_is_refused(pg_url: str) -> None:
    with open_store(pg_url, clock=SYSTEM_CLOCK) as first:
        first.set_meta("kept", "yes")
    with open_store(pg_url, clock=SYSTEM_CLOCK) as again:
        assert again.get_meta("kept") == "yes"
        with again.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaTooNew, match=r"9999.*newer than this Flywheel knows"):
        open_store(pg_url, clock=SYSTEM_CLOCK)


# ---------------------------------------------------------------- concurrency


def _race(stores: list[SqlStore], work: object) -> list[list[int]]:
    """Run ``work(index, got)`` in one thread per store at once; what each thread got."""
    got: list[list[int]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def run(index: int) -> None:
        start.wait()
        work(index, got[index])  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return got


def test_two_engines_claiming_the_inbox_never_both_get_an_event(pg_url: str) -> None:
    stores = [open_store(pg_url, clock=SYSTEM_CLOCK) for _ in range(2)]
    try:
        for n in range(80):
            stores[0].put_event(source="poll", delivery_id=str(n), kind="push", payload={})

        def work(index: int, got: list[int]) -> None:
            while batch := stores[index].claim_events(limit=3, worker=f"w{index}"):
                got.extend(event.id for event in batch)

        claimed = _race(stores, work)
        every = [event_id for ids in claimed for event_id in ids]
        assert len(every) == 80 and len(set(every)) == 80
    finally:
        for opened in stores:
            opened.close()


def test_a_claimed_event_is_skipped_not_waited_for_while_its_claim_is_open(pg_url: str) -> None:
    first, second = (open_store(pg_url, clock=SYSTEM_CLOCK) for _ in range(2))
    try:
        for n in range(2):
            first.put_event(source="poll", delivery_id=str(n), kind="push", payload={})
        with first.transaction():
            mine = first.claim_events(limit=1, worker="first")
            theirs = second.claim_events(limit=5, worker="second")  # the first row is locked: skipped
        assert [e.delivery_id for e in mine] == ["0"] and [e.delivery_id for e in theirs] == ["1"]
    finally:
        first.close()
        second.close()


def test_two_engines_queueing_the_same_keys_at_once_make_one_message_of_each(pg_url: str) -> None:
    stores = [open_store(pg_url, clock=SYSTEM_CLOCK) for _ in range(2)]
    try:

        def work(index: int, got: list[int]) -> None:
            for n in range(40):
                got.append(stores[index].enqueue(destination="console", key=f"k{n}", payload={"n": n}).id)

        ids = _race(stores, work)
        assert ids[0] == ids[1] and len(set(ids[0])) == 40
        assert len(stores[0].due_messages(limit=100)) == 40
    finally:
        for opened in stores:
            opened.close()


# ------------------------------------------------------------------ integrity


def test_the_sqlite_file_checks_step_aside_and_writability_is_still_proven(pg_url: str) -> None:
    with open_store(pg_url, clock=SYSTEM_CLOCK) as store:
        assert store.audit_mark_path is None
        store.append_audit(actor="test", action="test.done")
        store.checkpoint()  # nothing to do: no write-ahead log file of ours
        assert verify_state(store).state == "unmarked"  # writable, intact, no mark file to be behind
        assert store.record_audit_mark() is None and store.audit_comparison().state == "unmarked"
        with store.engine.begin() as conn:
            conn.execute(text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
            conn.execute(text("CREATE ROLE reader LOGIN"))
            conn.execute(text("GRANT USAGE ON SCHEMA public TO reader"))
            conn.execute(text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader"))
    reader_url = make_url(pg_url).set(username="reader").render_as_string(hide_password=False)
    with open_store(reader_url, clock=SYSTEM_CLOCK) as read_only, pytest.raises(StateNotWritable):
        verify_state(read_only)


# ------------------------------------------------------------- FLYWHEEL_DATABASE_URL


def test_the_commands_read_the_state_from_the_database_of_the_variable(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url, clock=SYSTEM_CLOCK) as store:
        run = store.create_run(model="churn", ref="main", commit="c1", cache_key="k1")
        store.update_run(run.id, status="succeeded")
        store.register_version(
            model="churn", run_id=run.id, commit="c1", artifact_digest="sha256:d", artifact_uri="file:///a",
            environment_hash="e",
        )  # fmt: skip
    empty = tmp_path / "no-state-here"
    result = CliRunner().invoke(
        main, ["versions", "churn", "--json", "--state-dir", str(empty)], env={ENV_DATABASE_URL: pg_url}
    )
    assert result.exit_code == 0, result.output
    assert [row["version"] for row in json.loads(result.output)] == [1]
    assert not empty.exists()


def test_an_unreachable_database_is_one_line_naming_the_variable_and_not_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://flywheel:s3cret-pw@127.0.0.1:{port}/flywheel"
    result = CliRunner().invoke(
        main, ["versions", "churn", "--state-dir", str(tmp_path)], env={ENV_DATABASE_URL: url}
    )
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: cannot use the Flywheel state in the database of FLYWHEEL_DATABASE_URL: ")
    assert f"127.0.0.1:{port}" in line and "s3cret-pw" not in line

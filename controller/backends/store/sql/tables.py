"""The tables, as the SQL of every record kind sees them: the query-side mirror of the migrations.

The migrations in ``migrations/versions`` create the schema (and a test checks
that these definitions describe exactly what they create, indexes aside);
these only describe it to SQLAlchemy, for the record kinds' SQL modules of
:mod:`controller.backends.store.sql`. Times are :class:`~.base.UTCDateTime`
(aware UTC in and out), structured detail is JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from controller.backends.store.pull_requests import (
    BranchPullRef,
    CheckRunRef,
    ReplyCommentRef,
    ReportCommentRef,
)
from controller.backends.store.sql.base import UTCDateTime

metadata = MetaData()


def time_column(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


def json_column(name: str) -> Column[Any]:
    return Column(name, JSON(), nullable=False)


def version_fk(name: str) -> ForeignKeyConstraint:
    """The (model, version) of a row names a registered model version."""
    return ForeignKeyConstraint(
        ["model", "version"], ["model_versions.model", "model_versions.number"], name=name
    )


# ------------------------------------------------------------------- inbox

inbox_events = Table(
    "inbox_events",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("delivery_id", String(255), nullable=False),
    Column("kind", String(128), nullable=False),
    json_column("payload"),
    time_column("received_at"),
    Column("claimed_by", String(255)),
    time_column("claimed_at", nullable=True),
    time_column("lease_expires_at", nullable=True),
    Column("attempts", Integer(), nullable=False),
    time_column("completed_at", nullable=True),
    Column("error", Text()),
    UniqueConstraint("source", "delivery_id", name="uq_inbox_events_delivery"),
)


# -------------------------------------------------------------------- runs

runs = Table(
    "runs",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("ref", String(255), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("cache_key", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger", String(64), nullable=False),
    json_column("steps"),
    json_column("metrics"),
    json_column("gates"),
    json_column("params"),
    json_column("data_fingerprints"),
    Column("environment_hash", String(255)),
    Column("artifact_path", Text()),
    Column("artifact_digest", String(255)),
    time_column("created_at"),
    time_column("started_at", nullable=True),
    time_column("finished_at", nullable=True),
    Column("error", Text()),
    Column("reused_from", Integer()),
    Column("baseline_version", Integer()),
    Column("image", String(512)),
)


# ---------------------------------------------------------------- registry

model_versions = Table(
    "model_versions",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("content_id", String(255), nullable=False),
    Column("run_id", Integer(), ForeignKey("runs.id", name="fk_model_versions_run"), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("artifact_digest", String(255), nullable=False),
    Column("artifact_uri", Text(), nullable=False),
    Column("environment_hash", String(255), nullable=False),
    json_column("data_fingerprints"),
    json_column("params"),
    json_column("metrics"),
    time_column("created_at"),
    Column("image", String(512)),
    UniqueConstraint("model", "run_id", name="uq_model_versions_run"),
)


# -------------------------------------------------------- rollouts, serving

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    json_column("stages"),
    Column("stages_key", String(1024), nullable=False),
    Column("state", String(64), nullable=False),
    Column("stage_index", Integer(), nullable=False),
    Column("step_index", Integer(), nullable=False),
    Column("weight", Integer(), nullable=False),
    Column("analysis_failures", Integer(), nullable=False),
    Column("paused", Boolean(), nullable=False),
    Column("revision", Integer(), nullable=False),
    json_column("detail"),
    time_column("created_at"),
    time_column("updated_at"),
    time_column("finished_at", nullable=True),
    version_fk("fk_rollouts_version"),
    UniqueConstraint("model", "version", "stages_key", name="uq_rollouts_stages"),
)

serving = Table(
    "serving",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("environment", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("weight", Integer(), nullable=False),
    time_column("at"),
    version_fk("fk_serving_version"),
    CheckConstraint("weight >= 0 AND weight <= 100", name="ck_serving_weight"),
)


# --------------------------------------------------------------- approvals

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("environment", String(255), nullable=False),
    Column("user", String(255), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("comment", Text(), nullable=False),
    time_column("created_at"),
    time_column("expires_at", nullable=True),
    version_fk("fk_approvals_version"),
)


# --------------------------------------------------------------- audit log

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    time_column("at"),
    Column("actor", String(255), nullable=False),
    Column("action", String(128), nullable=False),
    Column("model", String(255)),
    Column("version", Integer()),
    Column("environment", String(255)),
    json_column("detail"),
)


# ------------------------------------------------------------------ outbox

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("destination", String(64), nullable=False),
    Column("key", String(512), nullable=False),
    Column("ordering_key", String(512), nullable=False),
    json_column("payload"),
    Column("revision", Integer(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    time_column("created_at"),
    time_column("updated_at"),
    time_column("next_attempt_at", nullable=True),
    time_column("sent_at", nullable=True),
    Column("last_error", Text()),
    time_column("attempt_started_at", nullable=True),  # an attempt begun and not proven sent: in doubt
    UniqueConstraint("key", name="uq_outbox_key"),
)

outbox_pauses = Table(
    "outbox_pauses",
    metadata,
    Column("destination", String(64), primary_key=True),
    time_column("until"),
    Column("reason", Text(), nullable=False),
    time_column("updated_at"),
)


# ----------------------------------------------------------------- reviews

reviews = Table(
    "reviews",
    metadata,
    Column("proposal", String(255), primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("commit", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", Text(), nullable=False),
    Column("body", Text(), nullable=False),
    time_column("updated_at"),
)

commit_statuses = Table(
    "commit_statuses",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("proposal", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", Text(), nullable=False),
    time_column("at"),
)


# -------------------------------------------------------------------- meta

meta = Table(
    "meta",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text(), nullable=False),
    time_column("updated_at"),
)


# ------------------------------------------------------------------ github

pull_requests = Table(
    "pull_requests",
    metadata,
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("head_ref", Text(), nullable=False),
    Column("head_sha", Text(), nullable=False),
    Column("base_ref", Text(), nullable=False),
    Column("author", Text(), nullable=False),
    Column("fork", Boolean(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("merged", Boolean(), nullable=False),
    Column("updated_at", Text(), nullable=False),
    time_column("recorded_at"),
)

pull_request_branches = Table(
    "pull_request_branches",
    metadata,
    Column("branch", Text(), primary_key=True),
    Column("number", Integer(), nullable=False),
)

ok_to_test = Table(
    "ok_to_test",
    metadata,
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("sha", Text(), nullable=False),
    time_column("granted_at"),
)

handled_comments = Table(
    "handled_comments",
    metadata,
    Column("comment_id", BigInteger(), primary_key=True, autoincrement=False),
    Column("delivery_id", Text(), nullable=False),
    time_column("handled_at"),
)


def _ids(name: str, *key: Column[Any]) -> Table:
    return Table(
        name,
        metadata,
        *key,
        Column("github_id", BigInteger(), nullable=False),
        time_column("updated_at"),
    )


github_check_runs = _ids(
    "github_check_runs",
    Column("repository", Text(), primary_key=True),
    Column("commit", Text(), primary_key=True),
    Column("model", Text(), primary_key=True),
)
github_report_comments = _ids(
    "github_report_comments",
    Column("repository", Text(), primary_key=True),
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("model", Text(), primary_key=True),
)
github_reply_comments = _ids(
    "github_reply_comments",
    Column("repository", Text(), primary_key=True),
    Column("in_reply_to", BigInteger(), primary_key=True, autoincrement=False),
)
github_branch_pulls = _ids(
    "github_branch_pulls",
    Column("repository", Text(), primary_key=True),
    Column("branch", Text(), primary_key=True),
)
# Which table keeps the ids of each kind of GitHubRef: its key columns are the ref's fields.
GITHUB_ID_TABLES: dict[type[Any], Table] = {
    CheckRunRef: github_check_runs,
    ReportCommentRef: github_report_comments,
    ReplyCommentRef: github_reply_comments,
    BranchPullRef: github_branch_pulls,
}

github_poll_cursor = Table(
    "github_poll_cursor",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    time_column("listening_since"),
    time_column("comments_since"),
    CheckConstraint("id = 1", name="ck_github_poll_cursor_one"),
)


# ------------------------------------------------------------------- slack

slack_messages = Table(
    "slack_messages",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("version", Integer(), primary_key=True, autoincrement=False),
    Column("channel", Text(), nullable=False),
    Column("ts", Text(), nullable=False),
    json_column("view"),
    json_column("replied"),
    time_column("updated_at"),
)

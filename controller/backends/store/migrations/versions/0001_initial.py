"""Initial schema: inbox, runs, model versions, rollouts, serving, approvals, audit log, outbox, meta.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

A migration is frozen history: it spells out its own tables and types and
never imports the application's table definitions. Model versions, approvals
and the audit log are append-only; a trigger per dialect refuses UPDATE and
DELETE on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = ("model_versions", "approvals", "audit_log")


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.JSON(), nullable=False)


def _version_fk(name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["model", "version"], ["model_versions.model", "model_versions.number"], name=name
    )


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        _time("updated_at"),
    )

    op.create_table(
        "inbox_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        _json("payload"),
        _time("received_at"),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _time("claimed_at", nullable=True),
        _time("lease_expires_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _time("completed_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("source", "delivery_id", name="uq_inbox_events_delivery"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_inbox_events_open", "inbox_events", ["completed_at", "id"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("cache_key", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False, server_default=""),
        _json("steps"),
        _json("metrics"),
        _json("gates"),
        _json("params"),
        _json("data_fingerprints"),
        sa.Column("environment_hash", sa.String(255), nullable=True),
        sa.Column("artifact_path", sa.Text(), nullable=True),
        sa.Column("artifact_digest", sa.String(255), nullable=True),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'error', 'cancelled')",
            name="ck_runs_status",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_runs_model_ref", "runs", ["model", "ref", "id"])
    op.create_index("ix_runs_cache_key", "runs", ["cache_key", "status"])

    op.create_table(
        "model_versions",
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("content_id", sa.String(255), nullable=False),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_model_versions_run"), nullable=False
        ),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("artifact_digest", sa.String(255), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("environment_hash", sa.String(255), nullable=False),
        _json("data_fingerprints"),
        _json("params"),
        _json("metrics"),
        _time("created_at"),
        sa.UniqueConstraint("model", "run_id", name="uq_model_versions_run"),
        sa.CheckConstraint("number >= 1", name="ck_model_versions_number"),
    )
    op.create_index("ix_model_versions_content", "model_versions", ["content_id"])

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _json("stages"),
        sa.Column("stages_key", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("analysis_failures", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        _json("detail"),
        _time("created_at"),
        _time("updated_at"),
        _time("finished_at", nullable=True),
        _version_fk("fk_rollouts_version"),
        sa.UniqueConstraint("model", "version", "stages_key", name="uq_rollouts_stages"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rollouts_active", "rollouts", ["finished_at", "id"])
    op.create_index("ix_rollouts_model", "rollouts", ["model", "id"])

    op.create_table(
        "serving",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("environment", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        _time("at"),
        _version_fk("fk_serving_version"),
        sa.CheckConstraint("weight >= 0 AND weight <= 100", name="ck_serving_weight"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_serving_lookup", "serving", ["environment", "model", "at"])

    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("environment", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
        _time("created_at"),
        _time("expires_at", nullable=True),
        _version_fk("fk_approvals_version"),
        sa.CheckConstraint("decision IN ('approve', 'reject')", name="ck_approvals_decision"),
        sa.CheckConstraint("channel IN ('cli', 'github', 'slack')", name="ck_approvals_channel"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_approvals_subject", "approvals", ["model", "version", "environment"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _time("at"),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("environment", sa.String(255), nullable=True),
        _json("detail"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_model", "audit_log", ["model", "id"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        _json("payload"),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _time("created_at"),
        _time("updated_at"),
        _time("next_attempt_at", nullable=True),
        _time("sent_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("key", name="uq_outbox_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_due", "outbox", ["next_attempt_at"])

    _create_append_only_guards()


def _create_append_only_guards() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION flywheel_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = "
            "TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused'; END $$"
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION flywheel_append_only()"
            )


def _drop_append_only_guards() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
    elif dialect == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS flywheel_append_only()")


def downgrade() -> None:
    _drop_append_only_guards()
    for table in ("outbox", "audit_log", "approvals", "serving", "rollouts", "model_versions", "runs"):
        op.drop_table(table)
    op.drop_table("inbox_events")
    op.drop_table("meta")

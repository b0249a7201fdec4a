"""Reviews for the local forge, and the run a cache hit reused.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

``reviews`` holds one report per proposal and model, updated in place (the
local forge's sticky comment); ``commit_statuses`` keeps every status set,
per proposal, model and commit. ``runs.reused_from`` names the run whose
result a cache hit took.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("reused_from", sa.Integer(), nullable=True))

    op.create_table(
        "reviews",
        sa.Column("proposal", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("body", sa.Text(), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'success', 'failure', 'error')", name="ck_reviews_state"),
    )

    op.create_table(
        "commit_statuses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("proposal", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_commit_statuses_subject", "commit_statuses", ["proposal", "model", "commit", "id"])


def downgrade() -> None:
    op.drop_index("ix_commit_statuses_subject", table_name="commit_statuses")
    op.drop_table("commit_statuses")
    op.drop_table("reviews")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("reused_from")

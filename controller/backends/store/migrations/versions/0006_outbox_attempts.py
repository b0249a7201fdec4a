"""The outbox records an attempt before it makes it, so that a message cut short by a crash is in doubt.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

``outbox.attempt_started_at`` is written, and committed, before a message is
handed to its sender, and cleared when the message is marked sent. A message
that has it and is not sent was being sent when the controller stopped (or
its last attempt failed half-way): it may have reached its destination, so its
sender first looks there for it. A message queued before this revision has
no attempt on record, as nothing said otherwise. Additive: the downgrade drops
the column and loses no message.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEEP = {"sqlite_autoincrement": True}  # as 0001 created it: ids are never reused


def upgrade() -> None:
    with op.batch_alter_table("outbox", table_kwargs=_KEEP) as batch:
        batch.add_column(sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", table_kwargs=_KEEP) as batch:
        batch.drop_column("attempt_started_at")

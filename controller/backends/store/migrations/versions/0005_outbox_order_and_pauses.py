"""The outbox delivers in order per ordering key, and remembers the pauses services asked for.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

``outbox.ordering_key`` names the messages one message is delivered in order
with (a rollout's Slack thread; by default the message's own key): of those
not yet delivered, only the one queued first is due. A
message queued before this revision is ordered by its own key, as it was
delivered before. ``outbox_pauses`` keeps, per destination, the time before
which nothing is sent to it (a ``Retry-After``, a rate limit's reset), so
that a restarted controller waits too. Both are additive: the downgrade drops
them and loses no message.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_outbox = sa.table("outbox", sa.column("key", sa.String()), sa.column("ordering_key", sa.String()))
_KEEP = {"sqlite_autoincrement": True}  # as 0001 created it: ids are never reused


def upgrade() -> None:
    with op.batch_alter_table("outbox", table_kwargs=_KEEP) as batch:
        batch.add_column(sa.Column("ordering_key", sa.String(512), nullable=True))
    op.execute(_outbox.update().values(ordering_key=_outbox.c.key))
    with op.batch_alter_table("outbox", table_kwargs=_KEEP) as batch:
        batch.alter_column("ordering_key", existing_type=sa.String(512), nullable=False)
    op.create_index("ix_outbox_ordering", "outbox", ["ordering_key", "id"])
    op.create_table(
        "outbox_pauses",
        sa.Column("destination", sa.String(64), primary_key=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("outbox_pauses")
    op.drop_index("ix_outbox_ordering", table_name="outbox")
    with op.batch_alter_table("outbox", table_kwargs=_KEEP) as batch:
        batch.drop_column("ordering_key")

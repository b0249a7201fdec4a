"""Approvals may come from the web dashboard: ``approvals.channel`` allows ``dashboard``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

0001 limited the channel of an approval to ``cli``, ``github`` and ``slack``;
the dashboard records its decisions with the channel ``dashboard``. The
upgrade widens the check constraint (SQLite rebuilds the table, keeping its
rows, its index and the triggers that keep it append-only); the downgrade
narrows it again and refuses, in one line, while a decision made on the
dashboard is on record (an append-only row cannot be rewritten).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_approvals_channel"
_WIDE = "channel IN ('cli', 'github', 'slack', 'dashboard')"
_NARROW = "channel IN ('cli', 'github', 'slack')"
_KEEP = {"sqlite_autoincrement": True}  # approvals as 0001 created it: ids are never reused


def upgrade() -> None:
    _set_check(_WIDE)


def downgrade() -> None:
    found = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM approvals WHERE channel = 'dashboard'"))
    if found.scalar_one():
        raise RuntimeError(
            "cannot downgrade below 0008: approvals made on the dashboard are on record "
            "and the approvals table is append-only"
        )
    _set_check(_NARROW)


def _set_check(condition: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(_NAME, "approvals", type_="check")
        op.create_check_constraint(_NAME, "approvals", condition)
        return
    # SQLite alters no constraint: the table is copied, and its append-only triggers go with the old one
    for verb in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS approvals_no_{verb}")
    with op.batch_alter_table("approvals", recreate="always", table_kwargs=_KEEP) as batch:
        batch.drop_constraint(_NAME, type_="check")
        batch.create_check_constraint(_NAME, condition)
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER approvals_no_{verb.lower()} BEFORE {verb} ON approvals "
            f"BEGIN SELECT RAISE(ABORT, 'approvals is append-only: {verb} refused'); END"
        )

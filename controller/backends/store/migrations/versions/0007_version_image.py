"""A run and a model version name the image they ran in: ``reference@sha256:…``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

A run the cluster home executes runs in the image built for its environment
(tagged by the environment hash, pinned by the registry's digest); the run
records it as ``runs.image`` and the release copies it into
``model_versions.image``, so a version's lineage names its image. A run on
the embedded home has none (``NULL``), nor does any run or version made
before this revision. Both columns are additive; the downgrade drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
_KEEP = {"sqlite_autoincrement": True}  # runs as 0001 created it: ids are never reused


def upgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs=_KEEP) as batch:
        batch.add_column(sa.Column("image", sa.String(512), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("image", sa.String(512), nullable=True))


def downgrade() -> None:
    # SQLite drops a column in place (3.35+); a batch copy of ``runs`` would trip the versions' foreign key
    for table in ("model_versions", "runs"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN image")
        else:
            op.drop_column(table, "image")

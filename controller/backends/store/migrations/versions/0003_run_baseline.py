"""The production version a run's gates were judged against.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

``runs.baseline_version`` is the number of the model version that served
production when the run's gates and report compared it (NULL: none served).
When production moves on, an open proposal's run is judged again against the
new version, without training again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("baseline_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("baseline_version")

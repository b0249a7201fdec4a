"""The approvals' SQL: decisions bound to a registered model version and an environment.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.ApprovalRecords`). The table is
append-only: a trigger created by the first migration refuses UPDATE and
DELETE.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select

from controller.backends.store.approvals import Approval, ApprovalChannel, Decision
from controller.backends.store.sql.base import SqlBase, aware, new_id
from controller.backends.store.sql.mapping import record, records
from controller.backends.store.sql.tables import approvals

__all__ = ["ApprovalsSql"]


class ApprovalsSql(SqlBase):
    def add_approval(
        self,
        *,
        model: str,
        version: int,
        environment: str,
        user: str,
        decision: Decision,
        channel: ApprovalChannel,
        comment: str = "",
        expires_at: datetime | None = None,
    ) -> Approval:
        values = {
            "model": model,
            "version": version,
            "environment": environment,
            "user": user,
            "decision": decision,
            "channel": channel,
            "comment": comment,
            "created_at": self._now(),
            "expires_at": None if expires_at is None else aware(expires_at, "expires_at"),
        }
        with self._write() as conn:
            result = conn.execute(insert(approvals).values(**values))
            row = conn.execute(select(approvals).where(approvals.c.id == new_id(result))).mappings().one()
            return record(Approval, row)

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]:
        table = approvals
        query = (
            select(table)
            .where(table.c.model == model, table.c.version == version, table.c.environment == environment)
            .order_by(table.c.id)
        )
        with self._read() as conn:
            return records(Approval, conn.execute(query).mappings())

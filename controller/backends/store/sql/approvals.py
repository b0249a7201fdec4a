"""The approvals' SQL: decisions bound to a registered model version and an environment.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.ApprovalRecords`). The table is
append-only: a trigger created by the first migration refuses UPDATE and
DELETE.
"""

from __future__ import annotations

from typing import Unpack

from sqlalchemy import insert, select

from controller.backends.store.approvals import Approval, NewApproval
from controller.backends.store.sql.base import SqlBase, arguments, aware, new_id
from controller.backends.store.sql.mapping import record, records
from controller.backends.store.sql.tables import approvals

__all__ = ["ApprovalsSql"]


class ApprovalsSql(SqlBase):
    def add_approval(self, **approval: Unpack[NewApproval]) -> Approval:
        values = arguments("add_approval", NewApproval, approval, comment="", created_at=self._now())
        if values.get("expires_at") is not None:
            values["expires_at"] = aware(values["expires_at"], "expires_at")
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

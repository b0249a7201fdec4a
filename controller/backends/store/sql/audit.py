"""The audit log's SQL: entries appended, read oldest first, never changed.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.AuditLog`). The table is append-only: a
trigger created by the first migration refuses UPDATE and DELETE.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Unpack

from sqlalchemy import insert, select

from controller.backends.store.audit import AuditEntry, NewAuditEntry
from controller.backends.store.sql.base import SqlBase, arguments, aware, new_id
from controller.backends.store.sql.mapping import record, records
from controller.backends.store.sql.tables import audit_log

__all__ = ["AuditSql"]


class AuditSql(SqlBase):
    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry:
        values = arguments("append_audit", NewAuditEntry, entry, objects=("detail",), at=self._now())
        with self._write() as conn:
            result = conn.execute(insert(audit_log).values(**values))
        # The detail as it reads back from its JSON column.
        stored = values | {"detail": json.loads(json.dumps(values["detail"]))}
        return record(AuditEntry, {"id": new_id(result), **stored})

    def audit(
        self, *, model: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.id.desc())
        if model is not None:
            query = query.where(audit_log.c.model == model)
        if since is not None:
            query = query.where(audit_log.c.at >= aware(since, "since"))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            entries = records(AuditEntry, conn.execute(query).mappings())
        entries.reverse()
        return entries

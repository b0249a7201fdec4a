"""The audit log's SQL: entries appended, read oldest first, never changed; and its high-water mark.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.AuditLog`, and the audit half of
:class:`~controller.backends.store.integrity.StateIntegrity`). The table is
append-only: a trigger created by the first migration refuses UPDATE and
DELETE. Every append, once its transaction has committed, advances the
log's mark file (:class:`~controller.backends.store.integrity.MarkFile`)
over the entries the mark has not seen yet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime
from typing import Unpack

from sqlalchemy import insert, select

from controller.backends.store.audit import AuditEntry, NewAuditEntry
from controller.backends.store.common import StoreError
from controller.backends.store.integrity import AuditComparison, AuditMark, MarkFile, compare
from controller.backends.store.sql.base import SqlBase, arguments, aware, new_id
from controller.backends.store.sql.mapping import record, records
from controller.backends.store.sql.tables import audit_log

__all__ = ["STATE_ACCEPTED", "AuditSql"]

STATE_ACCEPTED = "state_accepted"
log = logging.getLogger("flywheel.store")


class AuditSql(SqlBase):
    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry:
        values = arguments("append_audit", NewAuditEntry, entry, objects=("detail",), at=self._now())
        with self._write() as conn:
            result = conn.execute(insert(audit_log).values(**values))
            self._after_commit(self._advance_audit_mark)
        # The detail as it reads back from its JSON column.
        stored = values | {"detail": json.loads(json.dumps(values["detail"]))}
        return record(AuditEntry, {"id": new_id(result), **stored})

    def audit(
        self,
        *,
        model: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        actions: Collection[str] | None = None,
        actor: str | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.id.desc())
        if model is not None:
            query = query.where(audit_log.c.model == model)
        if actions is not None:
            query = query.where(audit_log.c.action.in_(list(actions)))
        if since is not None:
            query = query.where(audit_log.c.at >= aware(since, "since"))
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if until is not None:
            query = query.where(audit_log.c.at < aware(until, "until"))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            entries = records(AuditEntry, conn.execute(query).mappings())
        entries.reverse()
        return entries

    # ------------------------------------------------------------ the mark

    def audit_comparison(self) -> AuditComparison:
        mark = MarkFile(self._audit_mark).read() if self._audit_mark is not None else None
        return compare(mark, self._entries_after(0))

    def record_audit_mark(self) -> AuditMark | None:
        if self._audit_mark is None:
            return None
        marks = MarkFile(self._audit_mark)
        with marks.locked():
            comparison = compare(marks.read(), self._entries_after(0))
            if comparison.state in ("ahead", "unmarked"):
                marks.write(comparison.database)
                return comparison.database
            return comparison.mark

    def accept_state(self, *, actor: str, reason: str) -> AuditComparison:
        before = self.audit_comparison()
        mark = before.mark
        self.append_audit(
            actor=actor,
            action=STATE_ACCEPTED,
            detail={
                "reason": reason,
                "was": before.state,
                "missing": before.missing,
                "mark": None if mark is None else asdict(mark),
                "database": asdict(before.database),
            },
        )
        if self._audit_mark is not None:
            marks = MarkFile(self._audit_mark)
            with marks.locked():
                marks.write(AuditMark().extended(self._entries_after(0)))
        return before

    def _entries_after(self, sequence: int) -> list[AuditEntry]:
        query = select(audit_log).where(audit_log.c.id > sequence).order_by(audit_log.c.id)
        with self._read() as conn:
            return records(AuditEntry, conn.execute(query).mappings())

    def _advance_audit_mark(self) -> None:
        """Extend the mark over the entries newer than it (a mark the log is behind is left as it is).

        Runs after the append's commit, so a failure here cannot undo it: it
        is logged, and the mark stays behind the log, which start-up repairs.
        """
        if self._audit_mark is None:
            return
        marks = MarkFile(self._audit_mark)
        try:
            with marks.locked():
                mark = marks.read()
                newer = self._entries_after(mark.sequence if mark is not None else 0)
                if newer:
                    marks.write((mark or AuditMark()).extended(newer))
        except (OSError, StoreError) as exc:
            log.error("could not advance the audit mark %s: %s", self._audit_mark, exc)

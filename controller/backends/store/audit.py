"""The append-only audit log: who did what, to what, and why (Invariant 6).

Every decision (run, gate result, approval, promotion, rollback, command)
appends an entry; the status views and ``flywheel audit`` read them. The
database refuses UPDATE and DELETE on the log.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypedDict, Unpack

from controller.backends.store.common import JSONObject

__all__ = ["AuditEntry", "AuditLog", "AuditReads", "NewAuditEntry"]


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log: who did what, to what, and why."""

    id: int
    at: datetime
    actor: str
    action: str
    model: str | None = None
    version: int | None = None
    environment: str | None = None
    detail: JSONObject = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """What the entry is about, as people read it: ``iris v2 production`` (the parts it has)."""
        version = f"v{self.version}" if self.version is not None else ""
        return " ".join(part for part in (self.model or "", version, self.environment or "") if part)

    def to_json(self) -> dict[str, Any]:
        """Every field, ``at`` in ISO 8601: what ``flywheel audit --json`` prints and the mark digests."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "model": self.model,
            "version": self.version,
            "environment": self.environment,
            "detail": self.detail,
        }


class _NewAuditKeys(TypedDict):
    actor: str
    action: str


class NewAuditEntry(_NewAuditKeys, total=False):
    """What :meth:`AuditLog.append_audit` takes; what it is about (model, version, ...) may be left out."""

    model: str | None
    version: int | None
    environment: str | None
    detail: JSONObject | None


class AuditReads(Protocol):
    """Reading the audit log (what every part that reads it narrows the store to)."""

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
        """Entries oldest first; with ``limit``, the newest ``limit``; with ``actions``, those only.

        ``actor`` keeps one person's (or Flywheel's) entries; ``until`` those before that time.
        """
        ...


class AuditLog(AuditReads, Protocol):
    """Entries are appended, never changed."""

    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry: ...

"""What every record kind of the store shares: the JSON type, the errors, and the time convention.

Imported by each record kind's module in :mod:`controller.backends.store` and
by its SQL implementation; callers import these names from the package.

Every time the store takes or hands out is a timezone-aware UTC
:class:`~datetime.datetime`; naive ones are refused. A method that records
"now" uses the store's :class:`~controller.clock.Clock` (never the machine's
own). Every method taking more than the record's id is keyword-only, and
every single method is atomic (see :class:`~controller.backends.store.Transactions`
for grouping calls). Structured detail is JSON: the values given must be
JSON-serialisable.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "JSONObject", "NotFound", "SchemaTooNew", "StoreError", "StoreUnreachable"]

JSONObject = dict[str, Any]


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class NotFound(StoreError, LookupError):
    """The record asked for does not exist."""


class Conflict(StoreError):
    """A compare-and-set update lost: the record changed since it was read."""

    def __init__(self, what: str, *, expected: int, actual: int) -> None:
        super().__init__(f"{what} changed: expected revision {expected}, found {actual}; re-read and retry")
        self.expected = expected
        self.actual = actual


class SchemaTooNew(StoreError):
    """The database was migrated by a newer Flywheel than this one."""


class StoreUnreachable(StoreError):
    """The database server cannot be reached or refused the connection (PostgreSQL); one line, no password."""

"""Leader election on a PostgreSQL session advisory lock, for replicas sharing a database without Kubernetes.

``FLYWHEEL_LEADER_ELECTION=postgres``: each replica holds an
:class:`AdvisoryLeadership` (built by
:func:`controller.engine.leadership.leadership_from_settings`) on the state
database of ``FLYWHEEL_DATABASE_URL``. The leader is the replica whose
dedicated connection holds ``pg_try_advisory_lock(key)``, the key a 64-bit
number derived from the election's name; PostgreSQL releases the lock when
that session ends, however it ends, so losing the connection is losing the
leadership. A renewal proves the session is alive (a query on it); one that
fails closes the connection and ends the term at once, and a term also ends
on its own, by the injected clock, two thirds of a lease duration after the
last proof. (A session the server dropped is noticed at the next renewal, at
most a third of the duration later: the replicas renew that often.) Who
holds the lock is read from ``pg_locks`` and the holder session's
``application_name``, which carries the replica's identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from controller.clock import Clock

__all__ = ["AdvisoryLeadership", "lock_key"]

log = logging.getLogger("flywheel.leader")

RENEW_DEADLINE = 2 / 3  # of the lease duration


def lock_key(name: str) -> int:
    """The advisory lock's key for the election ``name``: a signed 64-bit number, the same everywhere."""
    return int.from_bytes(hashlib.sha256(f"flywheel-leader:{name}".encode()).digest()[:8], "big", signed=True)


class AdvisoryLeadership:
    """This replica's side of the election ``name`` on the PostgreSQL database at ``url``."""

    def __init__(self, url: str, *, name: str, identity: str, duration_seconds: int, clock: Clock) -> None:
        self.name = name
        self.key = lock_key(name)
        self._identity = identity
        self._clock = clock
        self.duration = timedelta(seconds=duration_seconds)
        application = f"flywheel {identity}"[:63]  # PostgreSQL keeps 63 bytes of it
        self._engine: Engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"application_name": application, "connect_timeout": max(1, duration_seconds // 3)},
        )
        self._conn: Connection | None = None
        self._term_from: datetime | None = None
        self._holder: str | None = None

    @property
    def identity(self) -> str:
        return self._identity

    def try_acquire(self) -> bool:
        if self._term_from is not None:
            return self.renew()
        now = self._clock.now()
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            won = bool(
                self._conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar()
            )
        except SQLAlchemyError as exc:
            self._drop(f"cannot reach the database ({_first_line(exc)})")
            return False
        if won:
            log.info("advisory lock %s: %s leads now", self.name, self._identity)
            self._term_from, self._holder = now, self._identity
        else:
            self._holder = self._read_holder()
        return won

    def renew(self) -> bool:
        if self._conn is None or self._term_from is None:
            return False
        now = self._clock.now()
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            self._drop(f"its session is gone ({_first_line(exc)})")
            return False
        self._term_from = now
        return self.is_leader()

    def release(self) -> None:
        if self._conn is not None and self._term_from is not None:
            with contextlib.suppress(SQLAlchemyError):  # else the session is gone, and the lock with it
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        self._drop(None)

    def is_leader(self) -> bool:
        if self._term_from is None:
            return False
        if self._clock.now() >= self._term_from + self.duration * RENEW_DEADLINE:
            self._drop("not renewed in time")
        return self._term_from is not None

    def holder(self) -> str | None:
        return self._holder

    def close(self) -> None:
        self.release()
        self._engine.dispose()

    def _drop(self, why: str | None) -> None:
        if why is not None and self._term_from is not None:
            log.warning("advisory lock %s: leadership lost: %s", self.name, why)
        self._term_from = None
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()  # a session still open would keep the lock
            self._conn = None
        if self._holder == self._identity:
            self._holder = None

    def _read_holder(self) -> str | None:
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        query = text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = :high AND l.objid::bigint = :low"
        )
        if self._conn is None:
            return None
        try:
            name = self._conn.execute(query, {"high": unsigned >> 32, "low": unsigned & 0xFFFFFFFF}).scalar()
        except SQLAlchemyError:
            return None
        return str(name).removeprefix("flywheel ") if name else None


def _first_line(exc: SQLAlchemyError) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__

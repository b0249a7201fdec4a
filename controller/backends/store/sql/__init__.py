"""The state store on SQLAlchemy Core: SQLite (WAL) on one machine, PostgreSQL on a cluster.

:func:`controller.backends.store.open_store` builds a :class:`SqlStore`; the
composition root (:mod:`controller.app`) and the CLI commands that open a
store hold it, and hand each part the narrow protocols of
:mod:`controller.backends.store` it uses. :class:`SqlStore` is one mixin per
record kind (each module here holds that kind's SQL) over
:class:`~.base.SqlBase` (the engine, the clock, transactions, migrations),
on the tables of :mod:`.tables`; rows become records through one generic
mapper (:mod:`.mapping`).
"""

from __future__ import annotations

from controller.backends.store.sql.approvals import ApprovalsSql
from controller.backends.store.sql.audit import AuditSql
from controller.backends.store.sql.base import (
    MIGRATIONS_DIR,
    alembic_config,
    build_engine,
    json_text,
    migrate,
    schema_revision,
)
from controller.backends.store.sql.inbox import InboxSql
from controller.backends.store.sql.meta import MetaSql
from controller.backends.store.sql.outbox import OutboxSql
from controller.backends.store.sql.pull_requests import PullRequestsSql
from controller.backends.store.sql.registry import RegistrySql, content_id
from controller.backends.store.sql.reviews import ReviewsSql
from controller.backends.store.sql.rollouts import RolloutsSql
from controller.backends.store.sql.runs import RunsSql
from controller.backends.store.sql.slack import SlackSql
from controller.backends.store.sql.tables import metadata

__all__ = [
    "MIGRATIONS_DIR",
    "SqlStore",
    "alembic_config",
    "build_engine",
    "content_id",
    "json_text",
    "metadata",
    "migrate",
    "schema_revision",
]


class SqlStore(
    InboxSql,
    RunsSql,
    RegistrySql,
    RolloutsSql,
    ApprovalsSql,
    AuditSql,
    OutboxSql,
    ReviewsSql,
    PullRequestsSql,
    SlackSql,
    MetaSql,
):
    """Every record kind's protocol of :mod:`controller.backends.store` on one SQLAlchemy engine."""

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

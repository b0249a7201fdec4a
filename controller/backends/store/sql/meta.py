"""Controller-wide settings in SQL: the ``meta`` table, one value per name.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.Meta`). Records of single objects live
in their own tables, never here.
"""

from __future__ import annotations

from sqlalchemy import select

from controller.backends.store.sql.base import SqlBase
from controller.backends.store.sql.tables import meta

__all__ = ["MetaSql"]


class MetaSql(SqlBase):
    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        now = self._now()
        statement = self._upsert(meta).values(key=key, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": statement.excluded.value, "updated_at": now}
        )
        with self._write() as conn:
            conn.execute(statement)

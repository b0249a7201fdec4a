"""Slack message references in SQL: one row per model version's rollout message.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.SlackRecords`).
"""

from __future__ import annotations

from controller.backends.store.slack import SlackMessage
from controller.backends.store.sql.base import SqlBase
from controller.backends.store.sql.mapping import found, json_ready, keyed
from controller.backends.store.sql.tables import slack_messages

__all__ = ["SlackSql"]


class SlackSql(SqlBase):
    def slack_message(self, *, model: str, version: int) -> SlackMessage | None:
        with self._read() as conn:
            return found(conn, SlackMessage, keyed(slack_messages, model=model, version=version))

    def save_slack_message(self, message: SlackMessage) -> None:
        values = json_ready(message) | {"updated_at": self._now()}
        statement = self._upsert(slack_messages).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["model", "version"],
            set_={name: value for name, value in values.items() if name not in ("model", "version")},
        )
        with self._write() as conn:
            conn.execute(statement)

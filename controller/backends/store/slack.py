"""Slack message references: the one message per model version's rollout, and what it shows.

The Slack sender (:mod:`controller.backends.notify.slack`) posts a rollout's
parent message once and edits it after that; it keeps here where the message
is (channel and timestamp), what it shows, and which events it has answered
in its thread, so that a restarted controller keeps editing the same message
and never replies twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from controller.backends.store.common import JSONObject

__all__ = ["SlackMessage", "SlackRecords"]


@dataclass(frozen=True)
class SlackMessage:
    """The Slack message of ``model`` version ``version``'s rollout."""

    model: str
    version: int
    channel: str  # the channel id Slack answered with
    ts: str  # the message's timestamp, Slack's id of it
    view: JSONObject = field(default_factory=dict)  # what the message shows, as the sender folds events in
    replied: tuple[str, ...] = ()  # keys of the events already answered in the thread, oldest first


class SlackRecords(Protocol):
    """One message per model version."""

    def slack_message(self, *, model: str, version: int) -> SlackMessage | None: ...

    def save_slack_message(self, message: SlackMessage) -> None:
        """Create or replace the record of ``message.model`` version ``message.version``."""
        ...

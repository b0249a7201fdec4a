"""Finding in Slack a message the Slack sender may have posted already: what it does for a message in doubt.

:class:`~controller.backends.notify.slack.SlackSender` posts every message
with Slack message metadata naming it (:func:`metadata`: ``event_type``
``flywheel_outbox``, ``event_payload.key`` the message's key). For a message
in doubt (the controller was killed after Slack took it and before the store
recorded it) the sender asks :func:`in_thread` (a reply, by
``conversations.replies``) or :func:`find_parent` (a rollout's parent
message, by ``conversations.history`` of the channel, found by name with
``conversations.list`` when it is given as ``#name``) before posting it
again. Each read asks for ``include_all_metadata`` and pages through at most
:data:`LOOKUP_PAGES` pages. A token without the scopes to read (Slack's
``missing_scope`` and the like) finds nothing, with a warning: the message is
then posted again, at least once rather than never.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse, WebClient

__all__ = ["LOOKUP_PAGES", "METADATA_EVENT_TYPE", "find_parent", "in_thread", "metadata"]

METADATA_EVENT_TYPE = "flywheel_outbox"
LOOKUP_PAGE = 200  # messages per page
LOOKUP_PAGES = 5  # pages searched: a channel's newest 1000 messages, a thread's first 1000
UNREADABLE_ERRORS = frozenset({"missing_scope", "not_allowed_token_type", "no_permission"})
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,}")

_log = logging.getLogger("flywheel.notify.slack")


def metadata(key: str) -> dict[str, Any]:
    """The message metadata naming a posted message ``key`` (``chat.postMessage``'s ``metadata``)."""
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": key}}


def in_thread(client: WebClient, channel: str, ts: str, *, key: str) -> bool:
    """Whether the thread of message ``ts`` in ``channel`` has a message carrying ``key``."""
    pages = _pages(client.conversations_replies, channel=channel, ts=ts)
    return next(_carrying(pages, key), None) is not None


def find_parent(client: WebClient, target: str, *, key: str) -> tuple[str, str] | None:
    """The channel id and ``ts`` of a top-level message carrying ``key`` among ``target``'s recent ones."""
    channel = _channel_id(client, target)
    if channel is None:
        return None
    pages = _pages(client.conversations_history, channel=channel)
    ts = next(_carrying(pages, key, top_level=True), None)
    return None if ts is None else (channel, ts)


def _channel_id(client: WebClient, target: str) -> str | None:
    """``target``'s channel id: as it is when it is one, else found by name (``conversations.list``)."""
    if _CHANNEL_ID.fullmatch(target):
        return target
    name = target.removeprefix("#")
    pages = _pages(client.conversations_list, types="public_channel,private_channel", exclude_archived=True)
    for page in pages:
        for channel in page.get("channels") or []:
            if channel.get("name") == name:
                return str(channel["id"])
    return None


def _pages(method: Callable[..., SlackResponse], **args: Any) -> Iterator[Mapping[str, Any]]:
    """Up to :data:`LOOKUP_PAGES` pages of a paginated read; none when the token may not read."""
    cursor: str | None = None
    for _ in range(LOOKUP_PAGES):
        try:
            response = method(**args, include_all_metadata=True, limit=LOOKUP_PAGE, cursor=cursor)
        except SlackApiError as exc:
            error = exc.response.data.get("error", "") if isinstance(exc.response.data, dict) else ""
            if error not in UNREADABLE_ERRORS:
                raise
            _log.warning(
                "cannot look in Slack for a message that may have been posted (%s: the bot token needs "
                "channels:history and channels:read); posting it, perhaps a second time",
                error,
            )
            return
        data = response.data if isinstance(response.data, dict) else {}
        yield data
        cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            return


def _carrying(pages: Iterable[Mapping[str, Any]], key: str, *, top_level: bool = False) -> Iterator[str]:
    """The ``ts`` of each message in ``pages`` whose metadata names ``key`` (only top-level ones if asked)."""
    for page in pages:
        for message in page.get("messages") or []:
            found = message.get("metadata") or {}
            if found.get("event_type") != METADATA_EVENT_TYPE:
                continue
            if (found.get("event_payload") or {}).get("key") != key:
                continue
            if top_level and message.get("thread_ts") not in (None, message.get("ts")):
                continue
            yield str(message["ts"])

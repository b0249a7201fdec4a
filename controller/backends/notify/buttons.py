"""A press of a rollout message's Approve or Reject button, as the inbox keeps it, and the answers to it.

The webhook service (:mod:`webhooks.slack`) verifies Slack's request, reads
the press out of it and writes it to the inbox as a :class:`ButtonPress`
under :data:`SLACK_ACTION_KIND`. The engine's inbox consumer
(:mod:`controller.engine.slack_actions`) reads it back with
:meth:`ButtonPress.from_payload`, which holds a stored event to the same
shape, decides it, and queues what Slack should show for the Slack sender
(:mod:`.slack`): :func:`decision_message` (the rollout's message shows who
decided) or :func:`ephemeral_message` (a reply only the presser sees, posted
to Slack's ``response_url``). The buttons themselves, their action ids and
the value they carry, are made by :mod:`.slack`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.backends.store import JSONObject

__all__ = [
    "SLACK_ACTION_KIND",
    "SLACK_SOURCE",
    "STORE_INT_MAX",
    "ButtonPress",
    "decision_message",
    "ephemeral_message",
]

SLACK_SOURCE = "slack"  # the inbox source of Slack's requests, and the outbox destination of the answers
SLACK_ACTION_KIND = "slack.action"  # the inbox kind of a button press
STORE_INT_MAX = 2**31 - 1  # the store's integer columns (PostgreSQL's INTEGER) hold no more


class ButtonPress(BaseModel):
    """A click on a Flywheel Approve or Reject button: who, which decision, on which version."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    user_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,32}$")]  # U0CAROL01, W012A3CDE: as Slack writes
    decision: Literal["approve", "reject"]
    model: Annotated[str, Field(min_length=1, max_length=253)]
    version: Annotated[int, Field(ge=1, le=STORE_INT_MAX)]
    environment: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    response_url: str | None = None
    channel: str | None = None
    message_ts: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ButtonPress:
        """The press an inbox event holds; :class:`ValueError` saying where it does not fit, in one line."""
        try:
            return cls.model_validate(dict(payload))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"not a Slack button press: {where}: {first['msg']}") from None

    def to_payload(self) -> JSONObject:
        """What the inbox keeps of the press."""
        return self.model_dump()


def decision_message(press: ButtonPress, *, user: str, message: str) -> JSONObject:
    """The Slack sender's ``decision``: the rollout's message (and its thread) shows that ``user`` decided."""
    return {
        "kind": "decision",
        "model": press.model,
        "version": press.version,
        "environment": press.environment or "",
        "user": user,
        "decision": press.decision,
        "message": message,
        "channel": press.channel,
        "ts": press.message_ts,
    }


def ephemeral_message(response_url: str, text: str) -> JSONObject:
    """The Slack sender's ``ephemeral``: ``text`` posted to ``response_url``, seen by the presser only."""
    return {"kind": "ephemeral", "response_url": response_url, "text": text}

"""Slack interactivity: the Approve and Reject buttons of rollout messages.

:func:`webhooks.app.create_app` mounts :func:`actions_endpoint` at
``POST /hooks/slack/actions`` when a Slack signing secret is configured.
Each request is checked in this order:

* 413 when the body is over :data:`MAX_BODY_BYTES` (or the service's limit);
* 401 unless ``X-Slack-Signature`` is a valid signature of the raw body and
  ``X-Slack-Request-Timestamp`` is within five minutes of now (slack-sdk's
  :class:`~slack_sdk.signature.SignatureVerifier`) — nothing is stored;
* 400 when the signed body is not an interactivity payload (form field
  ``payload`` holding a JSON object), or a Flywheel button's value is not
  ours;
* 200 ``ignored`` for other payload types and other apps' buttons;
* 200 ``duplicate`` for an exact replay (same timestamp and body): the
  request's digest is its delivery id in the inbox, and nothing changes;
* otherwise the button becomes :meth:`Commands.decide` for the Slack user
  (the same checks as every other channel, and the audit entry), and the
  answer is 200 ``recorded``, ``duplicate`` (the decision was already
  recorded, e.g. Slack retried or the button was clicked twice) or
  ``refused``. A recorded decision queues a ``decision`` message for the
  Slack sender, which shows who approved on the rollout's message; a refusal
  queues an ephemeral reply to the person through the ``response_url``;
* 503 when the store fails (nothing is kept, the click can be repeated).

Recording the delivery, the decision and the queued message happen in one
store transaction, so a crash leaves all or none of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, NotRequired, TypedDict, cast
from urllib.parse import parse_qs

import anyio.to_thread
from slack_sdk.signature import Clock, SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controller.backends.notify.slack import APPROVE_ACTION, REJECT_ACTION
from controller.backends.store import Store
from controller.engine.commands import Actor, CommandOutcome, Commands

__all__ = [
    "MAX_BODY_BYTES",
    "SLACK_ACTIONS_PATH",
    "BadAction",
    "ButtonPress",
    "actions_endpoint",
    "parse_action",
]

SLACK_ACTIONS_PATH = "/hooks/slack/actions"
SOURCE = "slack"
INBOX_KIND = "slack.action"  # recorded for replay protection and history; already handled
MAX_BODY_BYTES = 1024 * 1024  # interactivity payloads carry the message; far below this

_DECISIONS: dict[str, Literal["approve", "reject"]] = {APPROVE_ACTION: "approve", REJECT_ACTION: "reject"}
_log = logging.getLogger("flywheel.webhooks.slack")

ReadBody = Callable[[Request, int], Awaitable[bytes | None]]


class SlackUser(TypedDict):
    id: str
    username: NotRequired[str]
    team_id: NotRequired[str]


class SlackAction(TypedDict):
    action_id: str
    block_id: NotRequired[str]
    value: NotRequired[str]
    type: NotRequired[str]
    action_ts: NotRequired[str]


class SlackContainer(TypedDict, total=False):
    type: str
    message_ts: str
    channel_id: str


class BlockActionsPayload(TypedDict):
    """The parts of Slack's ``block_actions`` payload that Flywheel reads."""

    type: Literal["block_actions"]
    user: SlackUser
    actions: list[SlackAction]
    response_url: NotRequired[str]
    container: NotRequired[SlackContainer]


class BadAction(ValueError):
    """A signed request that is not a well-formed interactivity payload."""


@dataclass(frozen=True)
class ButtonPress:
    """A click on a Flywheel Approve or Reject button."""

    user_id: str
    decision: Literal["approve", "reject"]
    model: str
    version: int
    environment: str | None
    response_url: str | None
    channel: str | None
    message_ts: str | None


def parse_action(body: bytes) -> ButtonPress | None:
    """The Flywheel button press in a signed request body; ``None`` when it is something else."""
    try:
        form = parse_qs(body.decode("utf-8"), max_num_fields=16, strict_parsing=True)
        data = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise BadAction("the body is not a form with a JSON 'payload' field") from exc
    if not isinstance(data, dict):
        raise BadAction("the payload is not a JSON object")
    if data.get("type") != "block_actions":
        return None
    payload = cast(BlockActionsPayload, data)
    actions = payload.get("actions")
    if not isinstance(actions, list):
        raise BadAction("block_actions without a list of actions")
    ours = [a for a in actions if isinstance(a, dict) and a.get("action_id") in _DECISIONS]
    if not ours:
        return None
    action = ours[0]
    user = payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
        raise BadAction("block_actions without a user id")
    try:
        value = json.loads(action.get("value", ""))
    except ValueError as exc:
        raise BadAction("the button's value is not JSON") from exc
    if not isinstance(value, dict):
        raise BadAction("the button's value is not a JSON object")
    model, version, environment = value.get("model"), value.get("version"), value.get("environment")
    if not isinstance(model, str) or not model or isinstance(version, bool) or not isinstance(version, int):
        raise BadAction("the button's value does not name a model and a version")
    if environment is not None and not isinstance(environment, str):
        raise BadAction("the button's environment is not a string")
    container = payload.get("container")
    container = container if isinstance(container, dict) else {}
    response_url = payload.get("response_url")
    return ButtonPress(
        user_id=user["id"],
        decision=_DECISIONS[action["action_id"]],
        model=model,
        version=version,
        environment=environment or None,
        response_url=response_url if isinstance(response_url, str) and response_url else None,
        channel=_text(container.get("channel_id")),
        message_ts=_text(container.get("message_ts")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _verified(verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None) -> bool:
    if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
        return False
    try:
        return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except (UnicodeDecodeError, ValueError):
        return False


Status = Literal["recorded", "duplicate", "refused"]


def _decide(store: Store, commands: Commands, press: ButtonPress, digest: str) -> Status:
    """Record the delivery, the decision and what Slack should show, in one transaction."""
    with store.transaction():
        fresh = store.put_event(
            source=SOURCE,
            delivery_id=digest,
            kind=INBOX_KIND,
            payload={
                "handled": True,
                "user": press.user_id,
                "decision": press.decision,
                "model": press.model,
                "version": press.version,
                "environment": press.environment,
            },
        )
        if not fresh:
            return "duplicate"
        outcome = commands.decide(
            Actor("slack", press.user_id),
            decision=press.decision,
            model=press.model,
            version=press.version,
            environment=press.environment,
            comment="from a Slack button",
        )
        if outcome.duplicate:
            return "duplicate"
        if outcome.ok:
            _queue_decision(store, press, outcome)
            return "recorded"
        if press.response_url:
            store.enqueue(
                destination=SOURCE,
                key=f"slack:ephemeral:{digest}",
                payload={
                    "kind": "ephemeral",
                    "response_url": press.response_url,
                    "text": f"Your {press.decision} of {press.model} v{press.version} was not recorded: "
                    f"{outcome.message}",
                },
                replace=False,
            )
        return "refused"


def _queue_decision(store: Store, press: ButtonPress, outcome: CommandOutcome) -> None:
    user = outcome.user or press.user_id
    environment = press.environment or ""
    store.enqueue(
        destination=SOURCE,
        key=f"slack:decision:{press.model}:v{press.version}:{environment}:{user}:{press.decision}",
        payload={
            "kind": "decision",
            "model": press.model,
            "version": press.version,
            "environment": environment,
            "user": user,
            "decision": press.decision,
            "message": outcome.message,
            "channel": press.channel,
            "ts": press.message_ts,
        },
        replace=False,
    )


def actions_endpoint(
    *,
    signing_secret: str,
    store: Store,
    commands: Commands,
    read_body: ReadBody,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Clock | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /hooks/slack/actions`` handler (see the module docstring)."""
    verifier = (
        SignatureVerifier(signing_secret) if clock is None else SignatureVerifier(signing_secret, clock)
    )
    limit = min(max_body_bytes, MAX_BODY_BYTES)

    def answer(status: str, code: int, **body: str) -> Response:
        return JSONResponse({"status": status, **body}, status_code=code)

    async def slack_actions(request: Request) -> Response:
        body = await read_body(request, limit)
        if body is None:
            return answer("too_large", 413, error=f"body over {limit} bytes")
        timestamp = request.headers.get("x-slack-request-timestamp")
        if not _verified(verifier, body, timestamp, request.headers.get("x-slack-signature")):
            return answer("bad_signature", 401, error="missing, invalid or stale Slack signature")
        try:
            press = parse_action(body)
        except BadAction as exc:
            return answer("bad_request", 400, error=str(exc))
        if press is None:
            return answer("ignored", 200)
        digest = hashlib.sha256(f"v0:{timestamp}:".encode() + body).hexdigest()
        try:
            status = await anyio.to_thread.run_sync(partial(_decide, store, commands, press, digest))
        except Exception:
            _log.exception(
                "could not record the Slack %s of %s v%s", press.decision, press.model, press.version
            )
            return answer("store_error", 503, error="the store is unavailable; try again")
        return answer(status, 200)

    return slack_actions

"""Slack interactivity: the Approve and Reject buttons of rollout messages, verified and queued.

:func:`webhooks.app.create_app` mounts :func:`actions_endpoint` at
``POST /hooks/slack/actions`` when a Slack signing secret is configured.
Each request is checked in this order:

* 413 when the body is over :data:`MAX_BODY_BYTES` (or the service's limit);
* 401 unless ``X-Slack-Signature`` is a valid signature of the raw body and
  ``X-Slack-Request-Timestamp`` (at most 12 digits) is within five minutes of
  now (slack-sdk's :class:`~slack_sdk.signature.SignatureVerifier`) —
  nothing is stored;
* 400 when the signed body is not an interactivity payload (form field
  ``payload`` holding a JSON object, nested no deeper than pydantic's JSON
  parser allows), a ``block_actions`` payload does not fit the fields
  Flywheel reads (:class:`BlockActionsPayload`: a Slack user id, the
  actions), or a Flywheel button's value is not ours
  (:class:`DecisionValue`: a model, and a version the store can hold) —
  nothing is stored;
* 200 ``ignored`` for other payload types and other apps' buttons;
* 200 ``duplicate`` for an exact replay (same timestamp and body): the
  request's digest is its delivery id in the inbox, and nothing changes;
* otherwise 200 ``accepted`` once the press
  (:class:`~controller.backends.notify.buttons.ButtonPress`) is in the inbox:
  Slack wants an answer within three seconds, so nothing is decided here.
  The controller's inbox consumer decides it
  (:mod:`controller.engine.slack_actions`, through ``Commands`` under main's
  policy, audited), then the rollout's message shows who approved, or the
  presser gets an ephemeral reply saying why not;
* 503 when the store fails (nothing is kept, the click can be repeated).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Literal
from urllib.parse import parse_qs

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.signature import Clock, SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controller.backends.forge.payloads import describe_error
from controller.backends.notify.buttons import SLACK_ACTION_KIND, SLACK_SOURCE, STORE_INT_MAX, ButtonPress
from controller.backends.notify.slack import APPROVE_ACTION, REJECT_ACTION
from controller.backends.store import Inbox
from controller.clock import Clock as FlywheelClock

__all__ = [
    "MAX_BODY_BYTES",
    "SLACK_ACTIONS_PATH",
    "BadAction",
    "BlockActionsPayload",
    "DecisionValue",
    "actions_endpoint",
    "parse_action",
]

SLACK_ACTIONS_PATH = "/hooks/slack/actions"
MAX_BODY_BYTES = 1024 * 1024  # interactivity payloads carry the message; far below this
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # seconds since 1970: ten digits until the year 2286

_DECISIONS: dict[str, Literal["approve", "reject"]] = {APPROVE_ACTION: "approve", REJECT_ACTION: "reject"}
_log = logging.getLogger("flywheel.webhooks.slack")

ReadBody = Callable[[Request, int], Awaitable[bytes | None]]


class BadAction(ValueError):
    """A signed request that is not a well-formed interactivity payload."""


class _Model(BaseModel):
    """Strict (JSON's types as given), immutable, and blind to the fields it does not declare."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Interaction(_Model):
    """Any interactivity payload: only its type is read before it is known to be ``block_actions``."""

    type: str


class SlackUser(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,32}$")]  # U0CAROL01, W012A3CDE: exactly as Slack writes


class SlackAction(_Model):
    """One action of the payload; other apps' actions may lack a value."""

    action_id: str
    value: str | None = None


class SlackContainer(_Model):
    message_ts: str | None = None
    channel_id: str | None = None


class BlockActionsPayload(_Model):
    """The parts of Slack's ``block_actions`` payload that Flywheel reads."""

    type: Literal["block_actions"]
    user: SlackUser
    actions: list[SlackAction]
    response_url: str | None = None
    container: SlackContainer | None = None


class DecisionValue(_Model):
    """A Flywheel button's value (:func:`controller.backends.notify.slack.decision_value`)."""

    model: Annotated[str, Field(min_length=1, max_length=253)]
    version: Annotated[int, Field(ge=1, le=STORE_INT_MAX)]
    environment: Annotated[str, Field(max_length=253)] | None = None


def parse_action(body: bytes) -> ButtonPress | None:
    """The Flywheel button press in a signed request body; ``None`` when it is something else.

    The ``payload`` field and the button's value are parsed by pydantic's
    JSON parser, which bounds nesting, and must fit the models above.
    """
    try:
        form = parse_qs(body.decode("utf-8"), max_num_fields=16, strict_parsing=True, errors="strict")
        text = form["payload"][0]
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise BadAction("the body is not a form with a 'payload' field") from exc
    try:
        if Interaction.model_validate_json(text).type != "block_actions":
            return None
        payload = BlockActionsPayload.model_validate_json(text)
    except ValidationError as exc:
        raise BadAction(f"the payload does not fit: {describe_error(exc)}") from None
    ours = [a for a in payload.actions if a.action_id in _DECISIONS]
    if not ours:
        return None
    action = ours[0]
    try:
        value = DecisionValue.model_validate_json(action.value or "")
    except ValidationError as exc:
        raise BadAction(f"the button's value is not a Flywheel decision: {describe_error(exc)}") from None
    container = payload.container or SlackContainer()
    return ButtonPress(
        user_id=payload.user.id,
        decision=_DECISIONS[action.action_id],
        model=value.model,
        version=value.version,
        environment=value.environment or None,
        response_url=payload.response_url or None,
        channel=container.channel_id or None,
        message_ts=container.message_ts or None,
    )


def _verified(verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None) -> bool:
    if not timestamp or not signature or _TIMESTAMP.fullmatch(timestamp) is None:
        return False  # a timestamp of more digits than seconds have would overflow the verifier's clock
    try:
        return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except (UnicodeDecodeError, ValueError, OverflowError):
        return False


class _VerifierClock(Clock):
    """slack-sdk's clock for request freshness, reading the one clock the controller runs on."""

    def __init__(self, clock: FlywheelClock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.timestamp()


def actions_endpoint(
    *,
    signing_secret: str,
    inbox: Inbox,
    clock: FlywheelClock,
    read_body: ReadBody,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /hooks/slack/actions`` handler (see the module docstring)."""
    verifier = SignatureVerifier(signing_secret, _VerifierClock(clock))
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
        put = partial(
            inbox.put_event,
            source=SLACK_SOURCE,
            delivery_id=digest,
            kind=SLACK_ACTION_KIND,
            payload=press.to_payload(),
        )
        try:
            fresh = await anyio.to_thread.run_sync(put)
        except Exception:
            _log.exception(
                "could not queue the Slack %s of %s v%s", press.decision, press.model, press.version
            )
            return answer("store_error", 503, error="the store is unavailable; try again")
        return answer("accepted" if fresh else "duplicate", 200)

    return slack_actions

"""GitHub deliveries: signature verification and turning a verified body into an inbox event.

Pure functions over bytes and header values, with no web framework, so the
receiver (:mod:`webhooks.app`), the tests and the benchmark share them.
GitHub signs each delivery with ``X-Hub-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the raw body under the webhook's secret; ``X-GitHub-Event``
names the event and ``X-GitHub-Delivery`` is a GUID that stays the same when
a delivery is redelivered, which is what the inbox deduplicates on.

A webhook sends its payload as ``application/json`` (the JSON is the body) or
as ``application/x-www-form-urlencoded``, GitHub's default (the body is
``payload=<the JSON, URL-encoded>``); either way the signature covers the body
as sent, so it is checked first and the form is decoded after. The payload of
a handled event must fit its model (:mod:`controller.backends.forge.payloads`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import parse_qs

from controller.backends.forge.payloads import HANDLED_EVENTS, PayloadError, validate_payload

__all__ = [
    "FORM_CONTENT_TYPE",
    "HANDLED_EVENTS",
    "SIGNATURE_PREFIX",
    "BadDelivery",
    "Delivery",
    "parse_delivery",
    "sign",
    "verify_signature",
]

SIGNATURE_PREFIX = "sha256="
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")
_EVENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DELIVERY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,63}")


class BadDelivery(ValueError):
    """A signed delivery that is not a well-formed GitHub event (answered 400)."""


@dataclass(frozen=True)
class Delivery:
    """A verified, well-formed delivery, ready for the inbox."""

    event: str  # X-GitHub-Event
    delivery_id: str  # X-GitHub-Delivery
    kind: str  # "<event>.<action>", or "<event>" for events without an action (push, ping)
    payload: dict[str, Any]
    text: bytes  # the JSON the payload was parsed from: the body, or the form's payload field

    @property
    def handled(self) -> bool:
        return self.event in HANDLED_EVENTS


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` under ``secret``."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """Whether ``header`` is a valid ``sha256=`` signature of ``body`` under one of ``secrets``.

    Only SHA-256 is accepted (GitHub's legacy ``X-Hub-Signature: sha1=`` is
    not). Digests are compared with :func:`hmac.compare_digest`; every secret
    is tried, so the time taken does not tell which one matched.
    """
    if header is None or _SIGNATURE.fullmatch(header) is None:
        return False
    given = header[len(SIGNATURE_PREFIX) :].lower().encode("ascii")
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return matched


def _media_type(content_type: str | None) -> str:
    message = Message()
    message["content-type"] = content_type or "application/json"
    return message.get_content_type()


def _json_text(body: bytes, content_type: str | None) -> bytes:
    """The JSON a delivery carries: the body itself, or its form field ``payload``."""
    if _media_type(content_type) != FORM_CONTENT_TYPE:
        return body
    try:
        form = parse_qs(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=1,
        )
    except (UnicodeDecodeError, ValueError):
        raise BadDelivery("the form body is not one URL-encoded 'payload' field") from None
    values = form.get("payload")
    if values is None or len(values) != 1:
        raise BadDelivery("the form body has no 'payload' field")
    return values[0].encode("utf-8")


def parse_delivery(
    *, event: str | None, delivery_id: str | None, body: bytes, content_type: str | None = None
) -> Delivery:
    """Check the headers and body of a delivery whose signature was verified; raise :class:`BadDelivery`.

    ``content_type`` is the ``Content-Type`` header: a form's ``payload`` field
    is read for ``application/x-www-form-urlencoded``, the body as JSON otherwise.
    """
    if not event or _EVENT.fullmatch(event) is None:
        raise BadDelivery("missing or malformed X-GitHub-Event header")
    if not delivery_id or _DELIVERY.fullmatch(delivery_id) is None:
        raise BadDelivery("missing or malformed X-GitHub-Delivery header")
    text = _json_text(body, content_type)
    try:
        payload = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadDelivery(f"the body is not JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise BadDelivery(f"the body is not acceptable JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadDelivery(f"the body is JSON {type(payload).__name__}, not an object")
    kind = event
    if "action" in payload:
        action = payload["action"]
        if not isinstance(action, str) or _ACTION.fullmatch(action) is None:
            raise BadDelivery("the payload's 'action' is not an action name")
        kind = f"{event}.{action}"
    try:
        validate_payload(event, payload)
    except PayloadError as exc:
        raise BadDelivery(str(exc)) from None
    return Delivery(event=event, delivery_id=delivery_id, kind=kind, payload=payload, text=text)

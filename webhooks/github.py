"""GitHub deliveries: signature verification and turning a verified body into an inbox event.

Pure functions over bytes and header values, with no web framework, so the
receiver (:mod:`webhooks.app`), the tests and the benchmark share them.
GitHub signs each delivery with ``X-Hub-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the raw body under the webhook's secret; ``X-GitHub-Event``
names the event and ``X-GitHub-Delivery`` is a GUID that stays the same when
a delivery is redelivered, which is what the inbox deduplicates on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HANDLED_EVENTS",
    "SIGNATURE_PREFIX",
    "BadDelivery",
    "Delivery",
    "parse_delivery",
    "sign",
    "verify_signature",
]

HANDLED_EVENTS: frozenset[str] = frozenset({"pull_request", "push", "issue_comment", "ping"})
SIGNATURE_PREFIX = "sha256="

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


def parse_delivery(*, event: str | None, delivery_id: str | None, body: bytes) -> Delivery:
    """Check the headers and body of a delivery whose signature was verified; raise :class:`BadDelivery`."""
    if not event or _EVENT.fullmatch(event) is None:
        raise BadDelivery("missing or malformed X-GitHub-Event header")
    if not delivery_id or _DELIVERY.fullmatch(delivery_id) is None:
        raise BadDelivery("missing or malformed X-GitHub-Delivery header")
    try:
        payload = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
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
    return Delivery(event=event, delivery_id=delivery_id, kind=kind, payload=payload)

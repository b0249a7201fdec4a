"""``POST /drift/{model}/{environment}``: KServe's inference logger posts a served model's traffic here.

Mounted by :func:`webhooks.app.create_app` when ``FLYWHEEL_DRIFT_TOKEN`` is
set. Each request is one CloudEvent, in binary mode (``ce-*`` headers, the
body is the data) or structured mode (``application/cloudevents+json``),
parsed with the CloudEvents SDK. The endpoint only verifies and enqueues:

* 413 when the body is over the size limit;
* 401 unless the token (``?token=`` in the logger's URL, or the
  ``X-Flywheel-Drift-Token`` header) is the configured one (compared in
  constant time) — nothing is stored;
* 400 when the body is not a CloudEvent, or its data is not a JSON object;
* 202 ``ignored`` for event types other than an inference request or answer;
* 202 ``accepted`` once the event is in the inbox (source ``kserve``,
  delivery id ``<ce-id>/request`` or ``<ce-id>/response``, so a request and
  its answer are matched by their ``ce-id`` and a replay changes nothing),
  200 ``duplicate`` for one seen before, 503 when the store fails.

The controller's inbox consumer adds the rows to the version's live window.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio.to_thread
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controller.backends.store import Inbox
from controller.drift.logger import (
    DRIFT_EVENT_KIND,
    DRIFT_EVENT_SOURCE,
    REQUEST_EVENT,
    RESPONSE_EVENT,
    TOKEN_HEADER,
    TOKEN_PARAMETER,
)

__all__ = ["drift_endpoint"]
_PARTS = {REQUEST_EVENT: "request", RESPONSE_EVENT: "response"}
_log = logging.getLogger("flywheel.webhooks.drift")

ReadBody = Callable[[Request, int], Awaitable[bytes | None]]


def drift_endpoint(
    *, token: str, inbox: Inbox, read_body: ReadBody, max_body_bytes: int, registry: CollectorRegistry
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /drift/{model}/{environment}`` handler (see the module docstring)."""
    events = Counter("flywheel_drift_events", "Inference events posted for drift, by outcome",
                     ["outcome"], registry=registry)
    expected = token.encode()

    def answer(outcome: str, code: int, **body: str) -> Response:
        events.labels(outcome=outcome).inc()
        return JSONResponse({"status": outcome, **body}, status_code=code)

    async def drift(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        if body is None:
            return answer("too_large", 413, error=f"body over {max_body_bytes} bytes")
        given = request.query_params.get(TOKEN_PARAMETER) or request.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(given.encode(), expected):
            return answer("bad_token", 401, error=f"missing or wrong drift token (?{TOKEN_PARAMETER}= or "
                                                  f"{TOKEN_HEADER})")
        try:
            event = ce_http.from_http_event(ce_http.HTTPMessage(headers=dict(request.headers), body=body))
        except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
            return answer("bad_request", 400, error=f"not a CloudEvent: {exc}"[:300])
        part = _PARTS.get(event.get_type())
        if part is None:
            return answer("ignored", 202, type=str(event.get_type()))
        data = _data(event.get_data())
        if data is None:
            return answer("bad_request", 400, error=f"the {part}'s data is not a JSON object")
        model, environment = request.path_params["model"], request.path_params["environment"]
        event_id = str(event.get_id())
        payload = {"model": model, "environment": environment, "id": event_id, "part": part,
                   "source": str(event.get_source()), "data": data}
        put = partial(inbox.put_event, source=DRIFT_EVENT_SOURCE, delivery_id=f"{event_id}/{part}",
                      kind=DRIFT_EVENT_KIND, payload=payload)
        try:
            fresh = await anyio.to_thread.run_sync(put)
        except Exception:
            _log.exception("could not queue the %s %s of %s in %s", part, event_id, model, environment)
            return answer("store_error", 503, error="the store is unavailable; try again")
        return answer("accepted" if fresh else "duplicate", 202 if fresh else 200, id=event_id, part=part)

    return drift


def _data(data: Any) -> dict[str, Any] | None:
    """The event's data as a JSON object (the SDK gives a dict for JSON, bytes or text otherwise)."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    return data if isinstance(data, dict) else None

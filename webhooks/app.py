"""The webhook receiver: an ASGI app that verifies GitHub deliveries and writes them to the inbox.

Called by ``flywheel serve`` (through :func:`serve`) and by tests, which
build the app with :func:`create_app` around a store of their own.

``POST /hooks/github`` answers, in this order of checks:

* 413 when the body exceeds ``settings.max_body_bytes`` (the limit is
  enforced while the body streams in; the rest is never read);
* 401 when ``X-Hub-Signature-256`` is missing or is not a valid signature of
  the raw body under one of the secrets — nothing is stored;
* 400 when a signed delivery lacks well-formed ``X-GitHub-Event`` or
  ``X-GitHub-Delivery`` headers, its body is not a JSON object (or, as
  ``application/x-www-form-urlencoded``, a form whose ``payload`` field is
  one), or the payload of a handled event does not have the shape Flywheel
  reads (:mod:`controller.backends.forge.payloads`) — nothing is stored, and
  the answer says what did not fit;
* 202 ``ignored`` for events Flywheel does not handle (counted, not stored);
* 202 ``accepted`` once a new event is durably in the inbox, 200
  ``duplicate`` when its delivery id was seen before (nothing changes);
* 503 when the store fails, so that GitHub delivers again later.

When ``settings.slack_signing_secret`` is set, ``POST /hooks/slack/actions``
is mounted too (:mod:`webhooks.slack`: the Approve/Reject buttons, whose
requests' freshness is judged on the ``clock`` passed in). When
``settings.drift_token`` is set, ``POST /drift/{model}/{environment}`` is
mounted (:mod:`webhooks.drift`: KServe's inference logger's CloudEvents).

The service only verifies and enqueues: it never waits on training, and
decides nothing; the controller's inbox consumer (:mod:`controller.engine.inbox`)
handles what it stored.
Deliveries are written by group commit (:class:`_InboxWriter`): one writer
thread stores every delivery waiting at that moment in one transaction and
answers each request after the commit, so a 2xx still means the event is
durably in the inbox, and under load one commit serves many deliveries. A
payload is stored as the verified JSON text it was parsed from, not
serialised again. ``GET /healthz`` checks the store answers a cheap read; ``GET
/metrics`` exposes per-app Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.backends.forge.payloads import GITHUB_SOURCE
from controller.backends.store import Inbox, Transactions
from controller.clock import Clock
from controller.drift.logger import DRIFT_LOGGER_PATH
from controller.settings import SettingsError, WebhookSettings
from webhooks.drift import drift_endpoint
from webhooks.github import HANDLED_EVENTS, BadDelivery, Delivery, parse_delivery, verify_signature
from webhooks.slack import SLACK_ACTIONS_PATH, actions_endpoint

__all__ = ["GITHUB_HOOK_PATH", "SLACK_ACTIONS_PATH", "InboxStore", "Outcome", "create_app", "serve"]

GITHUB_HOOK_PATH = "/hooks/github"

Outcome = Literal[
    "accepted", "duplicate", "ignored", "bad_signature", "too_large", "bad_request", "store_error"
]

_log = logging.getLogger("flywheel.webhooks")
# A batch is cut at whichever comes first; a single delivery over the byte cap is a batch of its own.
_BATCH_MAX_DELIVERIES = 256
_BATCH_MAX_BYTES = 8 * 1024 * 1024
_WRITER_IDLE_SECONDS = 5.0
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Metrics:
    """The app's own metrics, in a registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "flywheel_webhook_deliveries",
            "Webhook deliveries received, by event (handled events by name, the rest as 'other') and outcome",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flywheel_webhook_request_duration_seconds",
            "Time from the start of a delivery's request to its answer, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, event: str | None, outcome: Outcome, started: float) -> None:
        label = event if event in HANDLED_EVENTS else "other"
        self.deliveries.labels(event=label, outcome=outcome).inc()
        self.latency.labels(outcome=outcome).observe(time.perf_counter() - started)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The raw body, or ``None`` as soon as it is known to be longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        return None  # announced too long (18 digits is an exabyte; more would not even convert)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class InboxStore(Inbox, Transactions, Protocol):
    """What the service needs of the store: the inbox, transactions for group commit, a health check."""


class InboxUnavailable(Exception):
    """The transaction holding a delivery failed, so it is not in the inbox (answered 503)."""


class _ReceivedPayload(dict[str, Any]):
    """A delivery's payload as parsed, that knows its JSON text: the verified body it was parsed from.

    The SQL store writes that text (see ``__json_text__`` in
    :func:`controller.backends.store.sql.json_text`) instead of serialising
    the payload again; any other store sees a plain dict.
    """

    __slots__ = ("_text",)

    def __init__(self, payload: dict[str, Any], text: str) -> None:
        super().__init__(payload)
        self._text = text

    def __json_text__(self) -> str:
        return self._text


def _as_received(payload: dict[str, Any], body: bytes) -> dict[str, Any]:
    """``payload`` carrying ``body`` as its JSON text, when that text reads back as exactly ``payload``.

    ``json.loads`` also reads UTF-16/32 and a UTF-8 byte order mark, and lets
    encoded lone surrogates through; such bodies are serialised again instead.
    """
    if json.detect_encoding(body) != "utf-8":
        return payload
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return payload
    return _ReceivedPayload(payload, text)


@dataclass(eq=False)
class _Pending:
    """A delivery waiting for the writer, and the request waiting for its answer."""

    delivery: Delivery
    payload: dict[str, Any]
    size: int
    loop: asyncio.AbstractEventLoop
    answer: asyncio.Future[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.answer = self.loop.create_future()


def _settle(answers: list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    for answer, result in answers:
        if answer.done():  # the request went away; what it sent is stored all the same
            continue
        if isinstance(result, BaseException):
            answer.set_exception(result)
        else:
            answer.set_result(result)


class _InboxWriter:
    """Group commit: one thread writes every delivery that is waiting in one transaction.

    A request hands its verified delivery to :meth:`put` and waits. The
    writer thread takes all the deliveries pending (up to a cap), stores each
    with ``store.put_event`` inside one ``store.transaction()``, and answers
    the requests only once that transaction has committed: ``True`` for a new
    event, ``False`` for a duplicate (also of an earlier delivery in the same
    batch). When the transaction fails nothing of the batch is stored and
    every request of it gets :class:`InboxUnavailable`. While one batch
    commits the next one gathers, so under load one commit covers many
    deliveries, and an idle receiver makes a delivery wait for no timer.

    The thread starts with the first delivery and ends after a while idle.
    """

    def __init__(self, store: InboxStore) -> None:
        self._store = store
        self._ready = threading.Condition(threading.Lock())
        self._pending: deque[_Pending] = deque()
        self._running = False

    async def put(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` (verified and parsed) is new, once it is committed.

        Raises :class:`InboxUnavailable` when the transaction holding it failed.
        """
        payload = _as_received(delivery.payload, delivery.text)
        item = _Pending(delivery, payload, len(delivery.text), asyncio.get_running_loop())
        with self._ready:
            self._pending.append(item)
            if self._running:
                self._ready.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name="flywheel-inbox-writer", daemon=True).start()
        return await item.answer

    def _run(self) -> None:
        while True:
            with self._ready:
                if not self._pending:
                    self._ready.wait(_WRITER_IDLE_SECONDS)
                if not self._pending:
                    self._running = False
                    return
                batch = self._take()
            self._write(batch)

    def _take(self) -> list[_Pending]:
        batch = [self._pending.popleft()]
        size = batch[0].size
        while (
            self._pending
            and len(batch) < _BATCH_MAX_DELIVERIES
            and size + self._pending[0].size <= _BATCH_MAX_BYTES
        ):
            item = self._pending.popleft()
            size += item.size
            batch.append(item)
        return batch

    def _write(self, batch: list[_Pending]) -> None:
        results: list[bool | BaseException]
        try:
            with self._store.transaction():
                results = [
                    self._store.put_event(
                        source=GITHUB_SOURCE,
                        delivery_id=item.delivery.delivery_id,
                        kind=item.delivery.kind,
                        payload=item.payload,
                    )
                    for item in batch
                ]
        except Exception as exc:
            _log.error("could not store %d GitHub deliveries in one transaction", len(batch), exc_info=True)
            results = []
            for _ in batch:
                failure = InboxUnavailable(f"the inbox transaction failed: {exc}")
                failure.__cause__ = exc
                results.append(failure)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool | BaseException]]]
        by_loop = {}
        for item, result in zip(batch, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item.answer, result))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
                loop.call_soon_threadsafe(_settle, answers)


def create_app(
    settings: WebhookSettings,
    store: InboxStore,
    *,
    clock: Clock | None = None,
    collectors: Sequence[Collector] = (),
) -> Starlette:
    """The receiver's ASGI app, writing verified deliveries to ``store``.

    ``store`` is called from the app's inbox writer thread and from worker
    threads, so it must be usable from any thread (a file-backed or
    PostgreSQL store; not ``sqlite://`` in memory).
    ``clock`` judges how old a Slack request is; it is required when a Slack
    signing secret is set, and unused otherwise. ``collectors`` are exported
    on ``/metrics`` too (``flywheel serve`` passes the controller's drift
    gauges of the cluster's environments).
    """
    if settings.slack_signing_secret is not None and clock is None:
        raise SettingsError(
            "a Slack signing secret is set but the webhook service was given no clock to judge the age of "
            "Slack's requests by; pass clock=... or unset the Slack signing secret"
        )
    metrics = _Metrics()
    for collector in collectors:
        metrics.registry.register(collector)
    secrets = settings.github_secrets
    inbox = _InboxWriter(store)

    def answer(event: str | None, outcome: Outcome, started: float, status: int, **body: str) -> Response:
        metrics.observe(event, outcome, started)
        headers = {"Connection": "close"} if outcome == "too_large" else None
        return JSONResponse({"status": outcome, **body}, status_code=status, headers=headers)

    async def github_hook(request: Request) -> Response:
        started = time.perf_counter()
        event = request.headers.get("x-github-event")
        body = await _read_limited(request, settings.max_body_bytes)
        if body is None:
            return answer(
                event, "too_large", started, 413, error=f"body over {settings.max_body_bytes} bytes"
            )
        if not verify_signature(body, request.headers.get("x-hub-signature-256"), secrets):
            return answer(
                event, "bad_signature", started, 401, error="missing or invalid X-Hub-Signature-256"
            )
        try:
            delivery = parse_delivery(
                event=event,
                delivery_id=request.headers.get("x-github-delivery"),
                body=body,
                content_type=request.headers.get("content-type"),
            )
        except BadDelivery as exc:
            return answer(event, "bad_request", started, 400, error=str(exc))
        if not delivery.handled:
            return answer(event, "ignored", started, 202, delivery=delivery.delivery_id)
        try:
            new = await inbox.put(delivery)
        except Exception as exc:
            _log.warning(
                "could not store GitHub delivery %s (%s): %s", delivery.delivery_id, delivery.kind, exc
            )
            return answer(
                event, "store_error", started, 503, error="the inbox is unavailable; deliver again later"
            )
        if new:
            return answer(event, "accepted", started, 202, delivery=delivery.delivery_id, kind=delivery.kind)
        return answer(event, "duplicate", started, 200, delivery=delivery.delivery_id, kind=delivery.kind)

    async def healthz(request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(store.ping)
        except Exception as exc:
            _log.warning("health check: the store is unreachable: %s", exc)
            return JSONResponse(
                {"status": "unavailable", "error": "the store is unreachable"}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route(GITHUB_HOOK_PATH, github_hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if settings.slack_signing_secret is not None and clock is not None:
        slack_actions = actions_endpoint(
            signing_secret=settings.slack_signing_secret,
            inbox=store,
            clock=clock,
            read_body=_read_limited,
            max_body_bytes=settings.max_body_bytes,
        )
        routes.append(Route(SLACK_ACTIONS_PATH, slack_actions, methods=["POST"]))
    if settings.drift_token is not None:
        drift = drift_endpoint(token=settings.drift_token, inbox=store, read_body=_read_limited,
                               max_body_bytes=settings.max_body_bytes, registry=metrics.registry)
        routes.append(Route(DRIFT_LOGGER_PATH, drift, methods=["POST"]))
    return Starlette(routes=routes)


def serve(
    settings: WebhookSettings,
    store: InboxStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    access_log: bool = True,
    clock: Clock | None = None,
) -> None:
    """Serve the receiver with uvicorn until interrupted (``flywheel serve`` calls this).

    uvicorn runs on uvloop and parses HTTP with httptools when they are
    installed (``uvicorn[standard]``), and on asyncio and h11 otherwise.
    """
    import uvicorn

    config = uvicorn.Config(
        create_app(settings, store, clock=clock),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()

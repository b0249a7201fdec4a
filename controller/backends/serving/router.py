"""The weighted router of one environment on the embedded home, run as its own process.

:class:`~controller.backends.serving.local.LocalServing` starts it as
``python -m controller.backends.serving.router --port P --state FILE --environment NAME --instance ID``
and talks to it over HTTP. It

* proxies the Open Inference Protocol v2 model routes
  (``/v2/models/{model}``, ``/v2/models/{model}/ready``,
  ``/v2/models/{model}/infer``, ...) to the servers of the model's versions,
  split by weight with smooth weighted round robin (nginx's algorithm: over
  every 100 requests each version gets exactly its percent, evenly spread).
  ``/v2/models/{model}/versions/{version}/...`` goes to that version whatever
  its weight. Bodies are passed through as bytes, never parsed; the upstream
  connections are kept alive in one shared pool;
* answers ``/v2/health/live`` and ``/v2/health/ready`` itself, and ``/healthz``
  with ``{"status": "ok", "environment": ..., "instance": ..., "pid": ...}``:
  the instance identity it was started with, so the controller can tell its
  own router from any other process answering on the port;
* when it cannot listen on its port, says so in one line on stderr (its log)
  and exits with status 98 (``EADDRINUSE``);
* exposes ``/metrics`` (Prometheus text): ``flywheel_requests_total`` and the
  ``flywheel_request_duration_seconds`` histogram, labelled ``environment``,
  ``model``, ``version`` and ``outcome``. Only inference calls (``.../infer``)
  are counted, so health probes cannot pass for traffic. ``outcome`` is
  ``success`` for a 2xx answer and ``error`` for anything else: a non-2xx
  answer of the server (MLServer answers 4xx/5xx when the model raises on an
  input, and the canary analysis must see that), a refused or broken
  connection (answered 502) and a timeout (504);
* samples the inputs and predictions of each answered inference request of a
  version it watches for drift (``PUT /-/drift/{model}/{version}`` with the
  version's reference profile and settings; see :mod:`.drift_watch`), exports
  each feature's drift as ``flywheel_drift_*`` gauges on ``/metrics`` and
  answers ``GET /-/drift`` (``?model=`` for one) with the drift table;
* takes its routes from the controller at ``PUT /-/routes/{model}`` with
  ``{"versions": {"v1": {"url": "http://127.0.0.1:PORT", "weight": 80}, ...}}``
  (``DELETE`` removes the model, ``GET /-/routes`` lists all), and writes them
  atomically to the state file before answering, so a restarted router serves
  the same routes. When the environment variable ``FLYWHEEL_ROUTER_TOKEN`` is
  set, the admin routes need ``Authorization: Bearer <token>``.

A request for a model without routes, or whose versions all weigh 0, gets 404.
A request that fails on a reused keep-alive connection before any answer came
(the server closed an idle connection) is sent once more on a fresh one.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from controller.backends.serving import ServingError, check_weights
from controller.backends.serving.drift_watch import DriftWatch
from controller.clock import Clock, SystemClock

__all__ = ["RouteTable", "Upstream", "load_routes", "main", "make_app", "save_routes"]

TOKEN_ENV = "FLYWHEEL_ROUTER_TOKEN"
VERSION_HEADER = "X-Flywheel-Version"
"""Response header naming the version that answered."""

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUFFER_LIMIT = 1 << 20  # bodies up to this size are read whole; larger ones are streamed
_UPSTREAM_KEEPALIVE_SECONDS = 3.0  # below uvicorn's 5 s, so we close idle connections before it does
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length",
    }
)
_NOT_FORWARDED_BACK = _HOP_BY_HOP | {"server", "date"}


@dataclass
class Upstream:
    version: str
    url: str  # base URL of the version's server, no trailing slash
    weight: int
    current: int = 0  # smooth weighted round robin state


class RouteTable:
    """Each model's versions with their weights; :meth:`pick` chooses the next one."""

    def __init__(self) -> None:
        self._models: dict[str, list[Upstream]] = {}

    def set(self, model: str, versions: Mapping[str, tuple[str, int]]) -> None:
        old = {u.version: u for u in self._models.get(model, [])}
        upstreams = []
        for version, (url, weight) in sorted(versions.items()):
            upstream = Upstream(version=version, url=url.rstrip("/"), weight=weight)
            previous = old.get(version)
            if previous is not None and previous.weight == weight and previous.url == upstream.url:
                upstream.current = previous.current
            upstreams.append(upstream)
        if upstreams:
            self._models[model] = upstreams
        else:
            self._models.pop(model, None)

    def remove(self, model: str) -> None:
        self._models.pop(model, None)

    def pick(self, model: str) -> Upstream | None:
        upstreams = self._models.get(model)
        if not upstreams:
            return None
        best: Upstream | None = None
        total = 0
        for upstream in upstreams:
            if upstream.weight <= 0:
                continue
            upstream.current += upstream.weight
            total += upstream.weight
            if best is None or upstream.current > best.current:
                best = upstream
        if best is not None:
            best.current -= total
        return best

    def find(self, model: str, version: str) -> Upstream | None:
        return next((u for u in self._models.get(model, []) if u.version == version), None)

    def to_json(self) -> dict[str, Any]:
        return {
            model: {"versions": {u.version: {"url": u.url, "weight": u.weight} for u in upstreams}}
            for model, upstreams in sorted(self._models.items())
        }


def parse_versions(document: Any) -> dict[str, tuple[str, int]]:
    """The ``{"versions": {...}}`` body of ``PUT /-/routes/{model}``, checked; ServingError if bad."""
    if not isinstance(document, dict) or not isinstance(document.get("versions"), dict):
        raise ServingError('expected {"versions": {"<version>": {"url": ..., "weight": ...}}}')
    versions: dict[str, tuple[str, int]] = {}
    weights: dict[str, Any] = {}
    for version, entry in document["versions"].items():
        if not isinstance(entry, dict):
            raise ServingError(f"version {version}: expected an object with url and weight")
        url, weight = entry.get("url"), entry.get("weight")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ServingError(f"version {version}: url must be an http(s) URL, got {url!r}")
        weights[version] = weight
        versions[version] = (url, 0)
    checked = check_weights(weights)
    return {version: (url, checked[version]) for version, (url, _) in versions.items()}


def load_routes(state_file: Path) -> dict[str, dict[str, tuple[str, int]]]:
    """The routes persisted in ``state_file``; empty when it does not exist."""
    try:
        document = json.loads(state_file.read_text())
    except FileNotFoundError:
        return {}
    routes = document.get("routes", {}) if isinstance(document, dict) else {}
    return {model: parse_versions(entry) for model, entry in routes.items()}


def save_routes(state_file: Path, *, environment: str, routes: dict[str, Any]) -> None:
    """Write the routes atomically (temporary file, fsync, rename)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump({"environment": environment, "routes": routes}, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, state_file)


class _Metrics:
    def __init__(self, environment: str) -> None:
        self.environment = environment
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("environment", "model", "version", "outcome")
        self._requests = Counter(
            "flywheel_requests", "Inference requests through the router, by answering version and outcome.",
            labels, registry=self.registry,
        )
        self._duration = Histogram(
            "flywheel_request_duration_seconds",
            "Time from forwarding an inference request to the end of the server's answer.",
            labels, registry=self.registry, buckets=DURATION_BUCKETS,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, model: str, version: str, outcome: str, seconds: float) -> None:
        key = (model, version, outcome)
        children = self._children.get(key)
        if children is None:
            values = (self.environment, model, version, outcome)
            children = (self._requests.labels(*values), self._duration.labels(*values))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class _Router:
    def __init__(
        self, *, environment: str, state_file: Path, token: str | None, instance: str, clock: Clock
    ) -> None:
        self.environment = environment
        self.state_file = state_file
        self.token = token
        self.instance = instance
        self.table = RouteTable()
        for model, versions in load_routes(state_file).items():
            self.table.set(model, versions)
        self.stats = _Metrics(environment)
        self.drift = DriftWatch(
            environment=environment, state_file=state_file.with_name("drift.json"), now=clock.monotonic,
            wall=clock.timestamp,
        )
        self.stats.registry.register(self.drift)
        self.session: aiohttp.ClientSession | None = None
        self._admin_lock = asyncio.Lock()

    # ------------------------------------------------------------- lifecycle

    async def start(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=_UPSTREAM_KEEPALIVE_SECONDS, ttl_dns_cache=None
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=300.0),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def stop(self, _app: web.Application) -> None:
        self.drift.save_windows(include_open=True)  # a restarted router goes on with the same windows
        if self.session is not None:
            await self.session.close()

    # ---------------------------------------------------------------- admin

    def _authorised(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def list_routes(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong admin token")
        return web.json_response({"environment": self.environment, "routes": self.table.to_json()})

    async def put_route(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong admin token")
        model = request.match_info["model"]
        try:
            versions = parse_versions(await request.json())
        except (ValueError, ServingError) as exc:
            return _error(400, str(exc))
        async with self._admin_lock:
            before = set(self.table.to_json().get(model, {}).get("versions", {}))
            self.table.set(model, versions)
            self._save()
            self.drift.forget(model, before - set(versions))
        return web.json_response({"model": model, **self.table.to_json().get(model, {"versions": {}})})

    async def delete_route(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong admin token")
        async with self._admin_lock:
            self.table.remove(request.match_info["model"])
            self._save()
            self.drift.forget(request.match_info["model"])
        return web.json_response({"model": request.match_info["model"], "versions": {}})

    async def put_drift(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong admin token")
        model, version = request.match_info["model"], request.match_info["version"]
        try:
            entry = await request.json()
            async with self._admin_lock:
                self.drift.watch(model, version, entry)
        except ValueError as exc:
            return _error(400, f"{model} {version}: {exc}")
        return web.json_response({"model": model, "version": version, "watched": True})

    async def get_drift(self, request: web.Request) -> web.Response:
        return web.json_response(self.drift.to_json(request.query.get("model")))

    def _save(self) -> None:
        save_routes(self.state_file, environment=self.environment, routes=self.table.to_json())

    # --------------------------------------------------------------- public

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "environment": self.environment, "instance": self.instance, "pid": os.getpid()}
        )

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.stats.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        rest = request.match_info["rest"]
        pinned = request.match_info.get("version")
        upstream = self.table.find(model, pinned) if pinned else self.table.pick(model)
        if upstream is None:
            what = f"version {pinned} of model {model}" if pinned else f"model {model}"
            return _error(404, f"no route for {what} in environment {self.environment}")
        counted = rest == "/infer"
        watched = counted and self.drift.watches(model, upstream.version)
        url = f"{upstream.url}/v2/models/{model}{rest}"
        if request.query_string:
            url = f"{url}?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        length = request.content_length
        body: Any
        if not request.body_exists:
            body = None
        elif length is not None and length <= _BUFFER_LIMIT:
            body = await request.read()
        else:
            body = request.content.iter_chunked(1 << 16)
        assert self.session is not None
        started = time.perf_counter()
        outcome = "error"
        try:
            answer = await self._send(request.method, url, body, headers)
            try:
                response, answered = await self._relay(request, answer, upstream.version)
            finally:
                answer.release()
            outcome = "success" if 200 <= response.status < 300 else "error"
            if watched and outcome == "success" and isinstance(body, bytes) and answered is not None:
                self.drift.observe(model, upstream.version, body, answered)
            return response
        except TimeoutError:
            return _error(504, f"version {upstream.version} of {model} timed out", upstream.version)
        except (aiohttp.ClientError, OSError) as exc:
            return _error(502, f"version {upstream.version} of {model} is unreachable: {exc}",
                          upstream.version)
        finally:
            if counted:
                self.stats.observe(model, upstream.version, outcome, time.perf_counter() - started)

    async def _send(
        self, method: str, url: str, body: Any, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """The server's answer (headers read); once more on a fresh connection if a reused one was closed."""
        assert self.session is not None
        replayable = body is None or isinstance(body, bytes)
        try:
            return await self.session.request(method, url, data=body, headers=headers, allow_redirects=False)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if not replayable or isinstance(exc, aiohttp.ClientConnectorError):
                raise
        return await self.session.request(method, url, data=body, headers=headers, allow_redirects=False)

    async def _relay(
        self, request: web.Request, answer: aiohttp.ClientResponse, version: str
    ) -> tuple[web.StreamResponse, bytes | None]:
        """The answer relayed to the client, and its body when it was small enough to read whole."""
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED_BACK}
        headers[VERSION_HEADER] = version
        length = answer.content_length
        if length is not None and length <= _BUFFER_LIMIT:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, headers=headers), body
        stream = web.StreamResponse(status=answer.status, headers=headers)
        await stream.prepare(request)
        async for chunk in answer.content.iter_chunked(1 << 16):
            await stream.write(chunk)
        await stream.write_eof()
        return stream, None


def _error(status: int, message: str, version: str | None = None) -> web.Response:
    headers = {VERSION_HEADER: version} if version else None
    return web.json_response({"error": message}, status=status, headers=headers)


def make_app(
    *,
    environment: str,
    state_file: Path,
    token: str | None = None,
    instance: str = "",
    clock: Clock | None = None,
) -> web.Application:
    """The router's aiohttp application (routes loaded from ``state_file``; ``clock`` times drift windows)."""
    router = _Router(
        environment=environment, state_file=state_file, token=token, instance=instance,
        clock=clock or SystemClock(),
    )
    app = web.Application(client_max_size=_BUFFER_LIMIT * 64)
    app.on_startup.append(router.start)
    app.on_cleanup.append(router.stop)
    app.router.add_get("/healthz", router.healthz)
    app.router.add_get("/metrics", router.metrics)
    app.router.add_get("/v2/health/live", router.health)
    app.router.add_get("/v2/health/ready", router.health)
    app.router.add_get("/-/routes", router.list_routes)
    app.router.add_put("/-/routes/{model}", router.put_route)
    app.router.add_delete("/-/routes/{model}", router.delete_route)
    app.router.add_put("/-/drift/{model}/{version}", router.put_drift)
    app.router.add_get("/-/drift", router.get_drift)
    app.router.add_route("*", r"/v2/models/{model}/versions/{version}{rest:(/.*)?}", router.proxy)
    app.router.add_route("*", r"/v2/models/{model}{rest:(/.*)?}", router.proxy)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.backends.serving.router", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", type=Path, required=True, help="JSON file the routes are kept in")
    parser.add_argument("--environment", required=True)
    parser.add_argument("--instance", default="", help="identity echoed at /healthz")
    args = parser.parse_args(argv)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]
    app = make_app(
        environment=args.environment, state_file=args.state, token=os.environ.get(TOKEN_ENV),
        instance=args.instance,
    )
    print(f"flywheel router for {args.environment} on http://{args.host}:{args.port}", flush=True)
    try:
        web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, reuse_address=True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"flywheel router for {args.environment}: cannot listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        return errno.EADDRINUSE
    return 0


if __name__ == "__main__":
    sys.exit(main())

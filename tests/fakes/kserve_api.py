"""A stand-in KServe that serves: InferenceServices on the stand-in Kubernetes API, a server per revision.

:class:`FakeKServe` plugs into :class:`tests.fakes.kube_api.FakeKube` (its
``plugins``) and answers the calls :mod:`controller.backends.serving.kserve`
makes on ``serving.kserve.io/v1beta1`` ``inferenceservices``: create (201,
409 ``AlreadyExists``), get (404), list by label, JSON merge patch (409 when
the patch's ``metadata.resourceVersion`` is stale) and delete; and KServe's
``inferenceservice-config`` ConfigMap when :attr:`FakeKServe.default_mode`
is set.

It behaves as KServe in serverless mode does. A change of the predictor
(anything but ``canaryTrafficPercent``) bumps ``metadata.generation`` and
creates a revision ``<name>-predictor-0000N``, whose model server is started
in the background by the embedded home's own :class:`LocalServing` (a custom
server's command, or MLServer for ``sklearn``/``xgboost`` given a Python
environment), on the artifact its ``storageUri`` names: a directory on a
claim under ``claims`` (``pvc://``), or the objects under the key of an
``s3://`` URI, downloaded from :attr:`FakeKServe.s3` (a boto3 client of
moto's S3 server) into a directory of the revision's under ``downloads``,
as KServe's storage initializer downloads them into ``/mnt/models``: every
key that starts with the URI's path, but empty objects. As with KServe, a
predictor reading a bucket needs a ``serviceAccountName`` whose Secret
holds the bucket's credentials (:attr:`FakeKServe.s3_accounts`); without
one, or with nothing under the key, the revision fails with the storage
initializer's reason in its ``PredictorReady`` condition.
``status.components.predictor`` is filled as KServe fills it:
``latestCreatedRevision``, ``latestReadyRevision``, ``latestRolledoutRevision``
(the last revision that had all traffic), ``previousRolledoutRevision`` and
``traffic`` (with ``canaryTrafficPercent`` and a rolled-out revision: the
latest ready revision at that percentage tagged ``latest``, the rolled-out one
at the rest tagged ``prev``, each with its own URL; else all to the latest
ready revision), with a ``PredictorReady`` condition. A raw deployment
(annotation, or :attr:`default_mode`) ignores ``canaryTrafficPercent``.

Traffic really flows: ``status.url`` is a router that sends each request to a
revision by the traffic's weights (smooth weighted round robin, so shares are
exact), through the revision's queue proxy, which counts inference calls with
Knative's queue-proxy metric names, the ones KServe's serverless revisions
export: ``revision_app_request_count`` and ``revision_app_request_latencies``
(milliseconds), labelled ``namespace_name``, ``configuration_name``,
``revision_name``, ``response_code`` and ``response_code_class``. They are
served at :attr:`FakeKServe.metrics_url` for a real Prometheus to scrape.
"""

from __future__ import annotations

import copy
import http.client
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.local import LocalServing
from controller.specs.types import Environment, Serving

__all__ = ["STUB_SERVER", "FakeKServe"]

# A custom model server for a revision, honouring the custom-server contract: it answers OIP v2 with its
# version (the revision) and fails as its artifact's stub.json says: {"fail": "always"} answers every
# inference 500, {"fail": "partial"} those whose input holds 6.7 (part of the inputs).
STUB_SERVER = r"""
import json, os
from pathlib import Path
from aiohttp import web

name, version = os.environ["FLYWHEEL_MODEL_NAME"], os.environ["FLYWHEEL_MODEL_VERSION"]
knobs = Path(os.environ["FLYWHEEL_MODEL_DIR"], "stub.json")
fail = json.loads(knobs.read_text()).get("fail", "") if knobs.exists() else ""

async def ok(request):
    return web.json_response({})

async def infer(request):
    body = await request.read()
    if fail == "always" or (fail == "partial" and b"6.7" in body):
        return web.json_response({"error": "model raised"}, status=500)
    rows = json.loads(body)["inputs"][0]["shape"][0]
    return web.json_response({"model_name": name, "model_version": version, "outputs": [
        {"name": "echo", "shape": [rows], "datatype": "INT64", "data": [0] * rows}]})

async def metadata(request):
    return web.json_response({"name": name, "versions": [version], "platform": "stub"})

app = web.Application()
app.router.add_get("/v2/models/{name}", metadata)
app.router.add_get("/v2/health/ready", ok)
app.router.add_get("/v2/health/live", ok)
app.router.add_get("/v2/models/{name}/ready", ok)
app.router.add_post("/v2/models/{name}/infer", infer)
web.run_app(app, host=os.environ["FLYWHEEL_HOST"], port=int(os.environ["FLYWHEEL_PORT"]), print=None,
            access_log=None)
"""

_ISVC = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
_CONFIG = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps/inferenceservice-config$")
BUCKETS_MS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
RAW = frozenset({"RawDeployment", "Standard"})
Answer = tuple[int, Any]


def _status_body(code: int, reason: str, message: str) -> Answer:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class _Http(ThreadingHTTPServer):
    daemon_threads = True


def _serve(handle: Callable[[BaseHTTPRequestHandler, str], None]) -> _Http:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            handle(self, "GET")

        def do_POST(self) -> None:
            handle(self, "POST")

    server = _Http(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _forward(handler: BaseHTTPRequestHandler, method: str, url: str) -> int:
    """Send the request on to ``url`` and its answer back; the status answered."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else None
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    connection = http.client.HTTPConnection(host, int(port or 80), timeout=30)
    try:
        headers = {"Content-Type": handler.headers.get("Content-Type", "application/json")}
        connection.request(method, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        status, content_type = response.status, response.getheader("Content-Type", "application/json")
    except (OSError, http.client.HTTPException) as exc:
        status, data, content_type = 502, json.dumps({"error": str(exc)}).encode(), "application/json"
    finally:
        connection.close()
    _reply(handler, status, data, content_type)
    return status


@dataclass
class _Revision:
    name: str
    predictor: dict[str, Any]
    server_url: str | None = None
    failed: str | None = None
    proxy: _Http | None = None

    @property
    def ready(self) -> bool:
        return self.server_url is not None

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.server_address[1]}"


@dataclass
class _Service:
    namespace: str
    document: dict[str, Any]
    revisions: list[_Revision] = field(default_factory=list)
    latest_rolled_out: str | None = None
    previous_rolled_out: str | None = None
    router: _Http | None = None
    _credit: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])


@dataclass
class FakeKServe:
    """The InferenceService plugin of the stand-in Kubernetes API; start it, plug it, stop it."""

    serving: LocalServing
    claims: Path  # claim X is the directory claims/X
    environment: PythonEnvironment | None = None  # the model's, for MLServer revisions
    default_mode: str | None = None  # KServe's defaultDeploymentMode in inferenceservice-config
    s3: Any = None  # a boto3 S3 client, for s3:// storageUris
    s3_accounts: frozenset[str] = frozenset()  # ServiceAccounts whose Secret holds the bucket's credentials
    downloads: Path | None = None  # where s3:// models are downloaded (default: beside claims)
    services: dict[tuple[str, str], _Service] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # revisions whose server was started, in order
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _metrics: dict[tuple[str, ...], list[float]] = field(
        default_factory=dict
    )  # labels -> [count, sum, buckets...]
    _metrics_server: _Http | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._metrics_server = _serve(self._serve_metrics)

    def stop(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)
        servers = [s.router for s in self.services.values()] + [
            r.proxy for s in self.services.values() for r in s.revisions
        ]
        for server in [*servers, self._metrics_server]:
            if server is not None:
                server.shutdown()
                server.server_close()
        self.serving.shutdown()

    @property
    def metrics_url(self) -> str:
        assert self._metrics_server is not None
        return f"http://127.0.0.1:{self._metrics_server.server_address[1]}/metrics"

    @property
    def metrics_target(self) -> str:
        """host:port of :attr:`metrics_url`, for a Prometheus scrape config."""
        assert self._metrics_server is not None
        return f"127.0.0.1:{self._metrics_server.server_address[1]}"

    def wait_idle(self) -> None:
        """Wait until every revision started so far is ready or failed (tests)."""
        for thread in list(self._threads):
            thread.join(timeout=120)

    # ------------------------------------------------------------------ the plugin

    def handles(self, path: str) -> bool:
        return bool(_ISVC.match(path) or _CONFIG.match(path))

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Answer:
        config = _CONFIG.match(path)
        if config is not None:
            if method != "GET" or self.default_mode is None:
                return _status_body(404, "NotFound", 'configmaps "inferenceservice-config" not found')
            deploy = json.dumps({"defaultDeploymentMode": self.default_mode})
            return 200, {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "inferenceservice-config", "namespace": config.group(1)},
                "data": {"deploy": deploy},
            }
        match = _ISVC.match(path)
        assert match is not None
        namespace, name = match.groups()
        with self._lock:
            if name is None:
                if method == "POST":
                    return self._create(namespace, body)
                if method == "GET":
                    return 200, self._list(namespace, query.get("labelSelector", ""))
            else:
                service = self.services.get((namespace, name))
                if service is None:
                    return _status_body(
                        404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found'
                    )
                if method == "GET":
                    return 200, self._view(service)
                if method == "PATCH":
                    return self._patch(service, body)
                if method == "DELETE":
                    del self.services[(namespace, name)]
                    self._retire(service, keep=())
                    return 200, _status_body(200, "", "deleted")[1] | {"status": "Success"}
        return _status_body(405, "MethodNotAllowed", f"{method} {path}")

    # ------------------------------------------------------------------ the API's behaviour

    def _create(self, namespace: str, body: dict[str, Any]) -> Answer:
        name = body["metadata"]["name"]
        if (namespace, name) in self.services:
            return _status_body(
                409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists'
            )
        document = copy.deepcopy(body)
        document["metadata"].update(namespace=namespace, generation=1, uid=f"uid-{name}")
        document["metadata"]["resourceVersion"] = str(next(self._versions))
        service = _Service(namespace=namespace, document=document)
        service.router = _serve(lambda handler, method: self._route(service, handler, method))
        self.services[(namespace, name)] = service
        self._new_revision(service)
        return 201, self._view(service)

    def _patch(self, service: _Service, patch: dict[str, Any]) -> Answer:
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != service.document["metadata"]["resourceVersion"]:
            return _status_body(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        before = _template(service.document)
        patch = copy.deepcopy(patch)
        (patch.get("metadata") or {}).pop("resourceVersion", None)
        _merge(service.document, patch)
        service.document["metadata"]["resourceVersion"] = str(next(self._versions))
        if _template(service.document) != before:
            service.document["metadata"]["generation"] += 1
            self._new_revision(service)
        return 200, self._view(service)

    def _list(self, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        items = [
            self._view(s)
            for (ns, _), s in sorted(self.services.items())
            if ns == namespace
            and all(s.document["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceServiceList",
            "metadata": {},
            "items": items,
        }

    def _new_revision(self, service: _Service) -> None:
        revision = _Revision(
            name=f"{service.name}-predictor-{len(service.revisions) + 1:05d}",
            predictor=_template(service.document),
        )
        revision.proxy = _serve(lambda handler, method: self._queue_proxy(service, revision, handler, method))
        service.revisions.append(revision)
        thread = threading.Thread(target=self._start_server, args=(service, revision), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start_server(self, service: _Service, revision: _Revision) -> None:
        try:
            version = self._served(service, revision)
            environment = Environment(name=f"{service.namespace}-{service.name}", spec_path="kserve")
            self.serving.deploy(environment=environment, version=version)
            (deployed,) = [
                d
                for d in self.serving.deployed(environment=environment, model=service.name)
                if d.version == revision.name
            ]
        except (ServingError, ValueError, KeyError) as exc:
            with self._lock:
                revision.failed = f"Revision {revision.name} failed: {exc}"
            return
        with self._lock:
            self.started.append(revision.name)
            revision.server_url = deployed.url

    def _served(self, service: _Service, revision: _Revision) -> ServedVersion:
        spec = revision.predictor
        if "model" in spec:
            model = spec["model"]
            runtime, uri, command = model["modelFormat"]["name"], model["storageUri"], None
        else:
            container = spec["containers"][0]
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            runtime, uri, command = "custom", env["STORAGE_URI"], container["command"][-1]
        if uri.startswith("s3://"):
            artifact = self._download(uri, spec.get("serviceAccountName"), revision.name)
        else:
            claim, _, relative = uri.removeprefix("pvc://").partition("/")
            artifact = self.claims / claim / relative
            if not artifact.is_dir():
                raise ValueError(f"storageUri {uri}: no such directory on the claim")
        return ServedVersion(
            model=service.name,
            version=revision.name,
            serving=Serving(runtime=runtime, command=command),
            artifact_uri=str(artifact),
            environment=self.environment if runtime != "custom" else None,
        )

    def _download(self, uri: str, account: str | None, revision: str) -> Path:
        """The storage initializer: the objects under ``uri``'s key, downloaded as ``/mnt/models``."""
        from botocore.exceptions import BotoCoreError, ClientError

        if account is None:
            raise ValueError(
                f"storage-initializer: no credentials for {uri}: the predictor names no serviceAccountName"
            )
        if account not in self.s3_accounts:
            raise ValueError(
                f"storage-initializer: ServiceAccount {account!r} has no Secret with S3 credentials"
            )
        bucket, _, path = uri.removeprefix("s3://").partition("/")
        target = (self.downloads or self.claims.parent / "mnt-models") / revision
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=path)
            found = [o for page in pages for o in page.get("Contents", []) if o["Size"] > 0]
            for item in found:
                key = item["Key"]
                local = target / (key.removeprefix(path).lstrip("/") or key.rsplit("/", 1)[-1])
                local.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, key, str(local))
        except (BotoCoreError, ClientError) as exc:
            raise ValueError(f"storage-initializer: {uri}: {exc}") from None
        if not found:
            raise ValueError(f"storage-initializer: Failed to fetch model. No model found in {path}.")
        return target

    def _retire(self, service: _Service, keep: tuple[str, ...]) -> None:
        environment = Environment(name=f"{service.namespace}-{service.name}", spec_path="kserve")
        for revision in service.revisions:
            if revision.name not in keep and revision.ready:
                self.serving.retire(environment=environment, model=service.name, version=revision.name)

    # ------------------------------------------------------------------ status, as KServe reports it

    def _raw(self, service: _Service) -> bool:
        mode = service.document["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
        return (mode or self.default_mode) in RAW

    def _traffic(self, service: _Service) -> list[dict[str, Any]]:
        """The predictor's traffic now; moves the rolled-out revisions as KServe does."""
        ready = [r for r in service.revisions if r.ready]
        if not ready:
            return []
        latest = ready[-1]
        percent = service.document["spec"]["predictor"].get("canaryTrafficPercent")
        rolled = service.latest_rolled_out
        if percent is not None and rolled is not None and rolled != latest.name and not self._raw(service):
            prev = next(r for r in service.revisions if r.name == rolled)
            return [
                {
                    "revisionName": latest.name,
                    "percent": percent,
                    "latestRevision": True,
                    "tag": "latest",
                    "url": latest.url,
                },
                {
                    "revisionName": rolled,
                    "percent": 100 - percent,
                    "latestRevision": False,
                    "tag": "prev",
                    "url": prev.url,
                },
            ]
        if rolled != latest.name:
            service.previous_rolled_out, service.latest_rolled_out = rolled, latest.name
        return [{"revisionName": latest.name, "percent": 100, "latestRevision": True}]

    def _view(self, service: _Service) -> dict[str, Any]:
        document = copy.deepcopy(service.document)
        traffic = self._traffic(service)
        latest = service.revisions[-1]
        ready = [r for r in service.revisions if r.ready]
        predictor: dict[str, Any] = {"latestCreatedRevision": latest.name, "traffic": traffic}
        if ready:
            predictor["latestReadyRevision"] = ready[-1].name
        for key, value in (
            ("latestRolledoutRevision", service.latest_rolled_out),
            ("previousRolledoutRevision", service.previous_rolled_out),
        ):
            if value is not None:
                predictor[key] = value
        if latest.ready:
            condition = {"type": "PredictorReady", "status": "True"}
        elif latest.failed:
            condition = {
                "type": "PredictorReady",
                "status": "False",
                "reason": "RevisionFailed",
                "message": latest.failed,
            }
        else:
            condition = {"type": "PredictorReady", "status": "Unknown", "reason": "RevisionMissing"}
        assert service.router is not None
        url = f"http://127.0.0.1:{service.router.server_address[1]}"
        document["status"] = {
            "observedGeneration": document["metadata"]["generation"],
            "url": url,
            "address": {"url": url},
            "deploymentMode": "RawDeployment" if self._raw(service) else "Serverless",
            "conditions": [condition, {**condition, "type": "Ready"}],
            "components": {"predictor": predictor},
        }
        return document

    # ------------------------------------------------------------------ traffic

    def _route(self, service: _Service, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            traffic = [t for t in self._traffic(service) if t["percent"] > 0]
            if not traffic:
                return _reply(handler, 503, b'{"error": "no ready revision"}', "application/json")
            credit = service._credit
            for entry in traffic:  # smooth weighted round robin
                credit[entry["revisionName"]] = credit.get(entry["revisionName"], 0.0) + entry["percent"]
            chosen = max(traffic, key=lambda t: credit[t["revisionName"]])["revisionName"]
            credit[chosen] -= sum(t["percent"] for t in traffic)
            revision = next(r for r in service.revisions if r.name == chosen)
        _forward(handler, method, revision.url)

    def _queue_proxy(
        self, service: _Service, revision: _Revision, handler: BaseHTTPRequestHandler, method: str
    ) -> None:
        if revision.server_url is None:
            return _reply(handler, 503, b'{"error": "revision not ready"}', "application/json")
        started = time.monotonic()
        status = _forward(handler, method, revision.server_url)
        if handler.path.endswith("/infer"):
            self._count(service, revision, status, (time.monotonic() - started) * 1000.0)

    def _count(self, service: _Service, revision: _Revision, status: int, millis: float) -> None:
        configuration = f"{service.name}-predictor"
        labels = (
            service.namespace,
            configuration,
            configuration,
            revision.name,
            str(status),
            f"{status // 100}xx",
        )
        with self._lock:
            row = self._metrics.setdefault(labels, [0.0, 0.0] + [0.0] * len(BUCKETS_MS))
            row[0] += 1
            row[1] += millis
            for index, bound in enumerate(BUCKETS_MS):
                if millis <= bound:
                    row[2 + index] += 1

    def _serve_metrics(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        names = (
            "namespace_name",
            "service_name",
            "configuration_name",
            "revision_name",
            "response_code",
            "response_code_class",
        )
        lines = [
            "# HELP revision_app_request_count The number of requests that are routed to user-container",
            "# TYPE revision_app_request_count counter",
        ]
        latencies = [
            "# HELP revision_app_request_latencies The response time in millisecond",
            "# TYPE revision_app_request_latencies histogram",
        ]
        with self._lock:
            rows = sorted(self._metrics.items())
        for labels, row in rows:
            text = ",".join(f'{n}="{v}"' for n, v in zip(names, labels, strict=True))
            lines.append(f"revision_app_request_count{{{text}}} {row[0]:g}")
            for index, bound in enumerate(BUCKETS_MS):
                latencies.append(
                    f'revision_app_request_latencies_bucket{{{text},le="{bound}"}} {row[2 + index]:g}'
                )
            latencies.append(f'revision_app_request_latencies_bucket{{{text},le="+Inf"}} {row[0]:g}')
            latencies.append(f"revision_app_request_latencies_sum{{{text}}} {row[1]:g}")
            latencies.append(f"revision_app_request_latencies_count{{{text}}} {row[0]:g}")
        body = ("\n".join(lines + latencies) + "\n").encode()
        _reply(handler, 200, body, "text/plain; version=0.0.4")


def _template(document: dict[str, Any]) -> dict[str, Any]:
    """The predictor without its traffic percentage: what a revision is made of."""
    predictor = copy.deepcopy(document["spec"]["predictor"])
    predictor.pop("canaryTrafficPercent", None)
    return dict(predictor)

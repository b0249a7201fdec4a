"""A stand-in Kubernetes API for image-build Jobs, on a loopback port, for the real ``kubernetes`` client.

It speaks the wire format of the calls :mod:`controller.backends.images.buildkit`
makes: create a ConfigMap and a ``batch/v1`` Job (201, or 409 ``AlreadyExists``
as a ``Status``), get a Job, watch Jobs by ``fieldSelector=metadata.name=…``
(newline-delimited ``{"type", "object"}`` events after ``resourceVersion``),
list pods by ``labelSelector=job-name=…`` and read a pod's log. A Job stays
running until a watch asks for it; then :attr:`FakeKube.on_finish` runs (a
test uses it to push the image the build would have pushed) and only after it
the Job finishes as :attr:`FakeKube.outcome` says (succeeded or failed, with a
log) and its pod appears with that log, so no reader sees a finished build
whose image is not pushed yet. Every request is recorded. More kinds plug in as
:attr:`FakeKube.plugins` (Leases: :mod:`tests.fakes.kube_leases`;
InferenceServices: :mod:`tests.fakes.kserve_api`): the first that handles a
request's path is asked first, and answers it ``(status, body)``.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from kubernetes import client as k8s

__all__ = ["FakeKube", "Outcome"]

CREATED = "2026-01-01T00:00:00Z"
_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
_CONFIG_MAPS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


@dataclass(frozen=True)
class Outcome:
    succeeded: bool = True
    log: str = ""


class Plugin(Protocol):
    """More kinds served on the same port: the first plugin that ``handles`` a path answers it."""

    def handles(self, path: str) -> bool: ...

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """(status, JSON body, or text for a log) for ``method`` on ``path`` with its query and JSON body."""
        ...


@dataclass
class FakeKube:
    outcome: Callable[[dict[str, Any]], Outcome] = lambda job: Outcome()
    on_finish: Callable[[dict[str, Any]], None] = lambda job: None
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path with query)
    url: str = ""
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _clients: list[k8s.ApiClient] = field(default_factory=list)
    plugins: list[Plugin] = field(
        default_factory=list
    )  # Leases (kube_leases), InferenceServices (kserve_api)

    def api_client(self) -> k8s.ApiClient:
        """A real ``kubernetes`` client pointed at this server; closed by :meth:`stop`."""
        configuration = k8s.Configuration()
        configuration.host = self.url
        self._clients.append(k8s.ApiClient(configuration))
        return self._clients[-1]

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig whose current context is this server (what ``FLYWHEEL_KUBECONFIG`` names)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # ------------------------------------------------------------------ state

    def _stamp(self, document: dict[str, Any], namespace: str) -> dict[str, Any]:
        metadata = document.setdefault("metadata", {})
        metadata.update(
            namespace=namespace, resourceVersion=str(next(self._versions)), creationTimestamp=CREATED
        )
        metadata.setdefault("uid", f"uid-{metadata['resourceVersion']}")
        return document

    def _finish(self, key: tuple[str, str]) -> dict[str, Any]:
        job = self.jobs[key]
        if job.get("status", {}).get("conditions"):
            return job
        outcome = self.outcome(job)
        self.on_finish(job)  # the push happens before the Job completes, as BuildKit's does
        kind = "Complete" if outcome.succeeded else "Failed"
        job["status"] = {
            "succeeded" if outcome.succeeded else "failed": 1,
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": CREATED}],
        }
        self._stamp(job, key[0])
        pod_name = f"{key[1]}-x7k2p"
        self.pods[(key[0], pod_name)] = self._stamp(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "labels": {"job-name": key[1]}},
                "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
                "status": {"phase": "Succeeded" if outcome.succeeded else "Failed"},
            },
            key[0],
        )
        self.logs[(key[0], pod_name)] = outcome.log
        return job

    # ------------------------------------------------------------------ server

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def do_PUT(self) -> None:
                if not self._plugged("PUT"):
                    self._status(404, "NotFound", f"no route for PUT {urlsplit(self.path).path}")

            def _plugged(self, method: str) -> bool:
                split = urlsplit(self.path)
                plugin = next((p for p in outer.plugins if p.handles(split.path)), None)
                if plugin is None:
                    return False
                outer.requests.append((method, self.path))
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length)) if length else None
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                self._send(*plugin.answer(method, split.path, query, body))
                return True

            def do_PATCH(self) -> None:
                if not self._plugged("PATCH"):
                    self._status(404, "NotFound", f"no route for PATCH {self.path}")

            def do_DELETE(self) -> None:
                if not self._plugged("DELETE"):
                    self._status(404, "NotFound", f"no route for DELETE {self.path}")

            def do_POST(self) -> None:
                if self._plugged("POST"):
                    return
                path = urlsplit(self.path).path
                outer.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                for pattern, store, kind in (
                    (_JOBS, outer.jobs, "jobs.batch"),
                    (_CONFIG_MAPS, outer.config_maps, "configmaps"),
                ):
                    match = pattern.match(path)
                    if match and (pattern is not _JOBS or match.group(2) is None):
                        key = (match.group(1), body["metadata"]["name"])
                        with outer._lock:
                            if key in store:
                                return self._status(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
                            store[key] = outer._stamp(body, key[0])
                            if kind == "jobs.batch":
                                body["status"] = {}
                        return self._send(201, body)
                self._status(404, "NotFound", f"no route for POST {path}")

            def do_GET(self) -> None:
                if self._plugged("GET"):
                    return
                split = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                outer.requests.append(("GET", self.path))
                if match := _JOBS.match(split.path):
                    namespace, name = match.groups()
                    if name is not None:
                        job = outer.jobs.get((namespace, name))
                        if job is None:
                            return self._status(404, "NotFound", f'jobs.batch "{name}" not found')
                        return self._send(200, job)
                    if query.get("watch") == "true":
                        return self._watch(namespace, query)
                    return self._status(400, "BadRequest", "only watches of jobs are served")
                if match := _PODS.match(split.path):
                    wanted = query.get("labelSelector", "").removeprefix("job-name=")
                    items = [
                        pod
                        for (ns, _), pod in outer.pods.items()
                        if ns == match.group(1) and pod["metadata"]["labels"].get("job-name") == wanted
                    ]
                    return self._send(
                        200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
                    )
                if match := _LOG.match(split.path):
                    log = outer.logs.get((match.group(1), match.group(2)))
                    if log is None:
                        return self._status(404, "NotFound", f'pods "{match.group(2)}" not found')
                    return self._send(200, log, "text/plain")
                self._status(404, "NotFound", f"no route for GET {split.path}")

            def _watch(self, namespace: str, query: dict[str, str]) -> None:
                name = query.get("fieldSelector", "").removeprefix("metadata.name=")
                key = (namespace, name)
                with outer._lock:
                    if key not in outer.jobs:
                        return self._status(404, "NotFound", f'jobs.batch "{name}" not found')
                    job = outer._finish(key)
                since = int(query.get("resourceVersion") or 0)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if int(job["metadata"]["resourceVersion"]) > since:
                    self.wfile.write(json.dumps({"type": "MODIFIED", "object": job}).encode() + b"\n")
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for api in self._clients:
            api.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

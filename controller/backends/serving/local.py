"""Serving on the embedded home: one model server process per version, one router process per environment.

The rollout engine uses :class:`LocalServing` through the
:class:`~controller.backends.serving.ServingBackend` Protocol. Everything it
starts is a detached process (see :mod:`.server`) recorded under the state
directory given to the constructor::

    <state>/<environment>/router.json        the router's ProcessRecord (pid, port, admin token)
    <state>/<environment>/routes.json        the routes, written by the router itself
    <state>/<environment>/router.log
    <state>/<environment>/servers/<model>/<version>/server.json   the server's ProcessRecord
    <state>/<environment>/servers/<model>/<version>/server.log
    <state>/<environment>/servers/<model>/<version>/settings.json, <model>/model-settings.json (MLServer)

so a controller restarted after a crash (even ``kill -9``) finds the servers
and the router it had started, instead of starting second ones: a recorded
process is reused when its pid is alive with the recorded start time; a
server that is still starting is waited for. Every call is idempotent.

The router of an environment listens on ``Environment.port`` when set (a free
port otherwise); clients send OIP v2 requests to :meth:`LocalServing.endpoint`.
A version gets traffic only through :meth:`LocalServing.set_weights`, which
first checks that every version named is ready.

Server packages: for the ``sklearn``/``xgboost`` runtimes the version's
environment is extended with MLServer (:func:`.server.serving_environment`)
and built by the :class:`~controller.backends.pipelines.venvs.VenvCache`, by
default under ``$FLYWHEEL_VENV_CACHE`` or ``~/.cache/flywheel/venvs``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.backends.pipelines.venvs import VenvBuildError, VenvCache
from controller.backends.serving import (
    DeployedVersion,
    ServedVersion,
    ServingError,
    check_weights,
    inference_request,
)
from controller.backends.serving.router import TOKEN_ENV, load_routes
from controller.backends.serving.server import (
    LaunchPlan,
    ProcessRecord,
    free_port,
    http_status,
    is_alive,
    is_ready,
    log_tail,
    plan_custom_server,
    plan_mlserver,
    process_start_time,
    serving_environment,
    spawn_detached,
    stop_process,
)
from controller.specs.types import Environment

__all__ = ["LocalServing", "default_venv_root"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PORT_CLASH = ("address already in use", "errno 98", "eaddrinuse")


def default_venv_root() -> Path:
    """Where serving virtualenvs are cached: ``$FLYWHEEL_VENV_CACHE``, else the user cache."""
    configured = os.environ.get("FLYWHEEL_VENV_CACHE")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flywheel" / "venvs"


class LocalServing:
    """The embedded home's :class:`~controller.backends.serving.ServingBackend`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        venvs: VenvCache | None = None,
        ready_timeout_seconds: float = 120.0,
        stop_grace_seconds: float = 5.0,
    ) -> None:
        self.state_dir = state_dir
        self._venvs = venvs
        self.ready_timeout_seconds = ready_timeout_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, ...], threading.RLock] = {}

    # ------------------------------------------------------------ protocol

    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        _check_names(environment.name, version.model, version.version)
        with self._lock(environment.name, version.model, version.version):
            self._ensure_router(environment)
            server_dir = self._server_dir(environment.name, version.model, version.version)
            record = ProcessRecord.load(server_dir / "server.json")
            if record is not None and is_alive(record.pid, record.process_start):
                # Running already: ready now, or still starting when the controller stopped.
                self._wait_ready(record, server_dir)
                return
            server_dir.mkdir(parents=True, exist_ok=True)
            venv = self._venv_for(version)
            for attempt in range(3):
                record = self._start(version, venv=venv, server_dir=server_dir)
                try:
                    self._wait_ready(record, server_dir)
                    return
                except ServingError as exc:
                    clash = any(word in str(exc).lower() for word in _PORT_CLASH)
                    if not clash or attempt == 2:
                        raise

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        _check_names(environment.name, model, *weights)
        checked = check_weights(weights)
        with self._lock(environment.name):
            router = self._ensure_router(environment)
            versions: dict[str, dict[str, Any]] = {}
            for label, weight in checked.items():
                record = self._live_server(environment.name, model, label)
                if record is None:
                    raise ServingError(f"version {label} of {model} is not deployed in {environment.name}")
                if not is_ready(record.url, model):
                    raise ServingError(
                        f"version {label} of {model} in {environment.name} is not ready; "
                        "no traffic sent to it"
                    )
                versions[label] = {"url": record.url, "weight": weight}
            if versions:
                self._admin(router, "PUT", f"/-/routes/{model}", {"versions": versions})
            else:
                self._admin(router, "DELETE", f"/-/routes/{model}")

    def retire(self, *, environment: Environment, model: str, version: str) -> None:
        _check_names(environment.name, model, version)
        with self._lock(environment.name, model, version), self._lock(environment.name):
            routes = self._routes(environment.name).get(model, {})
            if version in routes:
                if routes[version][1] > 0:
                    raise ServingError(
                        f"version {version} of {model} still gets {routes[version][1]}% of the traffic in "
                        f"{environment.name}; shift it away before retiring"
                    )
                router = self._ensure_router(environment)
                remaining = {v: {"url": u, "weight": w} for v, (u, w) in routes.items() if v != version}
                if remaining:
                    self._admin(router, "PUT", f"/-/routes/{model}", {"versions": remaining})
                else:
                    self._admin(router, "DELETE", f"/-/routes/{model}")
            server_dir = self._server_dir(environment.name, model, version)
            self._stop_server(server_dir)

    def smoke_test(
        self, *, environment: Environment, model: str, version: str, inputs: Sequence[Sequence[object]]
    ) -> None:
        _check_names(environment.name, model, version)
        record = self._live_server(environment.name, model, version)
        if record is None:
            raise ServingError(f"version {version} of {model} is not running in {environment.name}")
        if not is_ready(record.url, model):
            raise ServingError(f"version {version} of {model} in {environment.name} is not ready")
        if not inputs:
            return
        body = json.dumps(inference_request(inputs)).encode()
        host, _, port = record.url.removeprefix("http://").rstrip("/").partition(":")
        connection = http.client.HTTPConnection(host, int(port or 80), timeout=10.0)
        try:
            connection.request(
                "POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServingError(f"smoke test of {model} {version}: no answer ({exc})") from exc
        finally:
            connection.close()
        if response.status != 200:
            tail = answer.decode("utf-8", "replace")[:500]
            raise ServingError(f"smoke test of {model} {version}: HTTP {response.status}: {tail}")
        try:
            outputs = json.loads(answer)["outputs"]
            rows = outputs[0]["shape"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServingError(
                f"smoke test of {model} {version}: not an OIP v2 answer: {answer[:200]!r}"
            ) from exc
        if rows != len(inputs):
            raise ServingError(f"smoke test of {model} {version}: {len(inputs)} inputs gave {rows} outputs")

    def deployed(self, *, environment: Environment, model: str) -> Sequence[DeployedVersion]:
        _check_names(environment.name, model)
        routes = self._routes(environment.name).get(model, {})
        result = []
        model_dir = self.state_dir / environment.name / "servers" / model
        for server_dir in sorted(model_dir.iterdir() if model_dir.is_dir() else ()):
            record = ProcessRecord.load(server_dir / "server.json")
            if record is None or not is_alive(record.pid, record.process_start):
                continue
            result.append(
                DeployedVersion(
                    model=model,
                    version=record.version,
                    url=record.url,
                    weight=routes.get(record.version, ("", 0))[1],
                    pid=record.pid,
                    metrics_url=record.metrics_url,
                    started_at=record.started_at,
                )
            )
        return tuple(result)

    def endpoint(self, *, environment: Environment, model: str) -> str:
        _check_names(environment.name, model)
        with self._lock(environment.name):
            return f"{self._ensure_router(environment).url}/v2/models/{model}"

    def metrics_url(self, *, environment: Environment) -> str:
        _check_names(environment.name)
        with self._lock(environment.name):
            return self._ensure_router(environment).metrics_url

    def shutdown(self) -> None:
        """Stop every server and router recorded under the state directory, and forget their routes."""
        if not self.state_dir.is_dir():
            return
        for env_dir in sorted(p for p in self.state_dir.iterdir() if p.is_dir()):
            with self._lock(env_dir.name):
                for record_file in sorted(env_dir.glob("servers/*/*/server.json")):
                    self._stop_server(record_file.parent)
                self._stop_router(env_dir)
                (env_dir / "routes.json").unlink(missing_ok=True)

    # --------------------------------------------------------------- servers

    def _server_dir(self, environment: str, model: str, version: str) -> Path:
        return self.state_dir / environment / "servers" / model / version

    def _live_server(self, environment: str, model: str, version: str) -> ProcessRecord | None:
        record = ProcessRecord.load(self._server_dir(environment, model, version) / "server.json")
        if record is None or not is_alive(record.pid, record.process_start):
            return None
        return record

    def _venv_for(self, version: ServedVersion) -> Path | None:
        if version.venv is not None:
            return version.venv
        runtime = version.serving.runtime
        if version.environment is None:
            if runtime == "custom":
                return None  # the controller's own PATH
            raise ServingError(
                f"version {version.version} of {version.model}: the {runtime} runtime needs the model's "
                "environment (or a virtualenv with MLServer)"
            )
        if self._venvs is None:
            self._venvs = VenvCache(default_venv_root())
        try:
            return self._venvs.ensure(serving_environment(version.environment, runtime))
        except VenvBuildError as exc:
            raise ServingError(f"cannot build the serving environment of {version.model}: {exc}") from exc

    def _start(self, version: ServedVersion, *, venv: Path | None, server_dir: Path) -> ProcessRecord:
        plan: LaunchPlan
        if version.serving.runtime == "custom":
            plan = plan_custom_server(version, venv=venv)
        else:
            if venv is None:
                raise ServingError(f"the {version.serving.runtime} runtime needs a virtualenv with MLServer")
            plan = plan_mlserver(version, venv=venv, server_dir=server_dir)
        log = server_dir / "server.log"
        with open(log, "ab") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {list(plan.argv)}\n".encode())
        pid = spawn_detached(plan.argv, cwd=plan.cwd, env=plan.env, log=log)
        record = ProcessRecord(
            kind="server",
            pid=pid,
            process_start=process_start_time(pid),
            port=plan.port,
            metrics_port=plan.metrics_port,
            grpc_port=plan.grpc_port,
            started_at=time.time(),
            model=version.model,
            version=version.version,
            runtime=version.serving.runtime,
            log=str(log),
        )
        record.save(server_dir / "server.json")
        return record

    def _wait_ready(self, record: ProcessRecord, server_dir: Path) -> None:
        """Return once the server answers ready; else stop it, forget it and raise with its log tail."""
        deadline = time.monotonic() + self.ready_timeout_seconds
        delay = 0.02
        while True:
            if is_ready(record.url, record.model):
                return
            alive = is_alive(record.pid, record.process_start)
            if not alive or time.monotonic() >= deadline:
                what = (
                    "exited before it was ready"
                    if not alive
                    else (f"was not ready after {self.ready_timeout_seconds:g}s")
                )
                self._stop_server(server_dir, keep_dir=True)
                tail = log_tail(server_dir / "server.log")
                raise ServingError(
                    f"the server of {record.model} {record.version} {what} (port {record.port}); "
                    f"log tail:\n{tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _stop_server(self, server_dir: Path, *, keep_dir: bool = False) -> None:
        record = ProcessRecord.load(server_dir / "server.json")
        if record is not None:
            stop_process(record.pid, record.process_start, grace_seconds=self.stop_grace_seconds)
        if keep_dir:
            (server_dir / "server.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(server_dir, ignore_errors=True)

    # ---------------------------------------------------------------- router

    def _routes(self, environment: str) -> dict[str, dict[str, tuple[str, int]]]:
        try:
            return load_routes(self.state_dir / environment / "routes.json")
        except (ValueError, ServingError):
            return {}

    def _ensure_router(self, environment: Environment) -> ProcessRecord:
        with self._lock(environment.name):
            env_dir = self.state_dir / environment.name
            record = ProcessRecord.load(env_dir / "router.json")
            if record is not None and is_alive(record.pid, record.process_start):
                if environment.port in (None, record.port) and self._router_up(record, wait=5.0):
                    return record
                self._stop_router(env_dir)
            return self._start_router(environment, env_dir)

    def _start_router(self, environment: Environment, env_dir: Path) -> ProcessRecord:
        env_dir.mkdir(parents=True, exist_ok=True)
        port = environment.port or free_port()
        token = secrets.token_urlsafe(24)
        argv = [
            sys.executable,
            "-m",
            "controller.backends.serving.router",
            "--port",
            str(port),
            "--state",
            str(env_dir / "routes.json"),
            "--environment",
            environment.name,
        ]
        log = env_dir / "router.log"
        pid = spawn_detached(argv, cwd=env_dir, env={**os.environ, TOKEN_ENV: token}, log=log)
        record = ProcessRecord(
            kind="router",
            pid=pid,
            process_start=process_start_time(pid),
            port=port,
            started_at=time.time(),
            log=str(log),
            token=token,
        )
        record.save(env_dir / "router.json")
        if not self._router_up(record, wait=30.0):
            self._stop_router(env_dir)
            raise ServingError(
                f"the router of {environment.name} did not start on port {port}; log tail:\n{log_tail(log)}"
            )
        return record

    def _router_up(self, record: ProcessRecord, *, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if http_status(record.url, "/healthz") == 200:
                return True
            if not is_alive(record.pid, record.process_start) or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _stop_router(self, env_dir: Path) -> None:
        record = ProcessRecord.load(env_dir / "router.json")
        if record is not None:
            stop_process(record.pid, record.process_start, grace_seconds=self.stop_grace_seconds)
        (env_dir / "router.json").unlink(missing_ok=True)

    def _admin(self, router: ProcessRecord, method: str, path: str, body: Any = None) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {router.token}", "Content-Type": "application/json"}
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ServingError(
                f"the router on port {router.port} did not answer {method} {path}: {exc}"
            ) from exc
        finally:
            connection.close()
        if response.status != 200:
            raise ServingError(f"the router refused {method} {path} ({response.status}): {text}")
        return json.loads(text)

    # ----------------------------------------------------------------- locks

    @contextlib.contextmanager
    def _lock(self, *key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.RLock())
        with lock:
            yield


def _check_names(*names: str) -> None:
    for name in names:
        if not _NAME.match(name):
            raise ServingError(f"{name!r} is not a valid environment, model or version name here")

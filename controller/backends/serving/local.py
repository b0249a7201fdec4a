"""Serving on the embedded home: one model server process per version, one router process per environment.

The rollout engine uses :class:`LocalServing` through the
:class:`~controller.backends.serving.ServingBackend` Protocol; ``flywheel
serving ls|stop|start`` uses :meth:`LocalServing.status`, :meth:`~LocalServing.stop`
and :meth:`~LocalServing.start`; the composition root gives the built-in
metrics source :meth:`LocalServing.metrics_url`, the router's own metrics.
Everything it starts is a detached process recorded under the state
directory given to the constructor: the routers by :mod:`.routers`, the
servers here (started and stopped by :mod:`.server`)::

    <state>/<environment>/servers/<model>/<version>/server.json   the server's ProcessRecord and launch plan
    <state>/<environment>/servers/<model>/<version>/server.log
    <state>/<environment>/servers/<model>/<version>/settings.json, <model>/model-settings.json (MLServer)

so a controller restarted after a crash (even ``kill -9``) finds the servers
and the router it had started, instead of starting second ones. Each launch is
recorded before it happens, with a fresh instance token the process carries
(:mod:`.server`); a recorded process is reused when its pid is alive with the
recorded start time, a process launched just before the crash (no pid
recorded yet) is adopted by its token, a launch that was replaced is stopped,
and a server that is still starting is waited for. Every call is idempotent.

Model servers listen on free ports chosen per launch (a clash there is
retried on new ports); the routers' ports and identities are
:mod:`.routers`'. A model server counts as ready only when the process
listening on its port is ours and its model metadata names our model and
version (:func:`.server.foreign_answer`).

Stopping. :meth:`LocalServing.stop` ends the processes and keeps their
records and routes; :meth:`LocalServing.start` (and the next call that needs
the environment's router) starts the router again on its port, and its
stopped servers with their recorded launch plans, on the same ports;
:meth:`~LocalServing.set_weights` and :meth:`~LocalServing.deploy` start a
stopped server they need the same way. Nothing of this is written to the
store: the store says which versions should serve, not which processes run.

Clients send OIP v2 requests to :meth:`LocalServing.endpoint`. A version gets
traffic only through :meth:`LocalServing.set_weights`, which first checks
that every version named is ready.

Server packages: for the ``sklearn``/``xgboost`` runtimes the version's
environment is extended with MLServer (:func:`.server.serving_environment`)
and built by the :class:`~controller.backends.local.venvs.VenvCache` given to
the constructor; a custom server command runs in the version's own
environment, built the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.backends.local.processes import INSTANCE_ENV, is_alive, new_instance, process_start_time
from controller.backends.local.venvs import VenvBuildError, VenvCache
from controller.backends.serving import (
    DeployedVersion,
    ObservedServing,
    ServedVersion,
    ServingError,
    check_weights,
    inference_request,
)
from controller.backends.serving.drift_watch import fetch_drift
from controller.backends.serving.local_status import EnvironmentServing, ServerState
from controller.backends.serving.observe_local import observe_local
from controller.backends.serving.routers import Routers
from controller.backends.serving.server import (
    LaunchPlan,
    PortInUse,
    ProcessRecord,
    foreign_answer,
    is_ready,
    launch,
    log_tail,
    plan_custom_server,
    plan_mlserver,
    port_holder,
    serving_environment,
    settle,
    stop_recorded,
    superseding,
    terminate,
)
from controller.clock import Clock
from controller.specs.types import Environment

__all__ = ["EnvironmentServing", "LocalServing", "ServerState"]

log = logging.getLogger("flywheel.serving")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LAUNCH_ATTEMPTS = 3


class LocalServing:
    """The embedded home's :class:`~controller.backends.serving.ServingBackend`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        venvs: VenvCache | None = None,
        ready_timeout_seconds: float = 120.0,
        stop_grace_seconds: float = 5.0,
        clock: Clock,
    ) -> None:
        self.state_dir = state_dir.absolute()  # the router and servers run elsewhere than here
        self._venvs = venvs
        self.ready_timeout_seconds = ready_timeout_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self._clock = clock
        self._routers = Routers(self.state_dir, stop_grace_seconds=stop_grace_seconds, clock=clock)
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, ...], threading.RLock] = {}

    # ------------------------------------------------------------ protocol

    def deploy(self, *, environment: Environment, version: ServedVersion) -> None:
        _check_names(environment.name, version.model, version.version)
        with self._lock(environment.name, version.model, version.version):
            self._routers.watch_drift(self._ensure_router(environment), version)
            server_dir = self._server_dir(environment.name, version.model, version.version)
            record = self._record(server_dir)
            if record is not None and is_alive(record.pid, record.process_start):
                # Running already: ready now, or still starting when the controller stopped.
                self._wait_ready(record, server_dir)
                return
            server_dir.mkdir(parents=True, exist_ok=True)
            if record is not None and record.plan is not None and _ports_free(record):
                with contextlib.suppress(ServingError):  # the ports or the plan went stale: start afresh
                    self._relaunch(record, record.plan, server_dir)
                    return
            venv = self._venv_for(version)
            for attempt in range(_LAUNCH_ATTEMPTS):
                record = self._start(version, venv=venv, server_dir=server_dir)
                try:
                    self._wait_ready(record, server_dir)
                    return
                except PortInUse as exc:  # its ports were free when chosen; someone took one since
                    if attempt == _LAUNCH_ATTEMPTS - 1:
                        raise
                    log.info("%s; starting %s %s on other ports", exc, version.model, version.version)

    def set_weights(self, *, environment: Environment, model: str, weights: Mapping[str, int]) -> None:
        _check_names(environment.name, model, *weights)
        checked = check_weights(weights)
        with self._lock(environment.name):
            versions: dict[str, tuple[str, int]] = {}
            for label, weight in checked.items():
                record = self._live_server(environment.name, model, label) or self._revive(
                    environment.name, model, label
                )
                if record is None:
                    raise ServingError(f"version {label} of {model} is not deployed in {environment.name}")
                if not is_ready(record.url, model):
                    raise ServingError(
                        f"version {label} of {model} in {environment.name} is not ready; "
                        "no traffic sent to it"
                    )
                versions[label] = (record.url, weight)
            if versions == self._routes(environment.name).get(model, {}):
                return  # routed so already: nothing to change, no router needed
            self._routers.put_routes(self._ensure_router(environment), model, versions)

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
                remaining = {v: route for v, route in routes.items() if v != version}
                self._routers.put_routes(self._ensure_router(environment), model, remaining)
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
            with self._lock(environment.name, model, server_dir.name):
                record = self._record(server_dir)  # a server launched just before a crash counts
            if record is None or not is_alive(record.pid, record.process_start):
                continue
            result.append(
                DeployedVersion(
                    model=model,
                    version=record.version,
                    url=record.url,
                    weight=routes.get(record.version, ("", 0))[1],
                    started_at=record.started_at,
                )
            )
        return tuple(result)

    def observe(self, *, environment: Environment) -> ObservedServing:
        """What serves ``environment`` as its router and servers report it (:mod:`.observe_local`)."""
        _check_names(environment.name)
        return observe_local(self.state_dir, environment.name)

    def endpoint(self, *, environment: Environment, model: str) -> str:
        _check_names(environment.name, model)
        with self._lock(environment.name):
            return f"{self._ensure_router(environment).url}/v2/models/{model}"

    def metrics_url(self, *, environment: Environment) -> str:
        """The router's Prometheus endpoint, with ``flywheel_requests_total`` and the latency histogram.

        Not part of the Protocol: the composition root hands it to the
        built-in metrics source for the environments this backend serves.
        """
        _check_names(environment.name)
        with self._lock(environment.name):
            return self._ensure_router(environment).metrics_url

    def drift(self, *, environment: Environment, model: str) -> dict[str, Any]:
        """The router's drift table of ``model`` (``GET /-/drift``, :func:`.drift_watch.fetch_drift`).

        Not part of the Protocol: the composition root hands it to the drift trigger
        (:mod:`.drift_source`).
        """
        _check_names(environment.name, model)
        with self._lock(environment.name):
            url = self._ensure_router(environment).url
        return fetch_drift(url, model)

    def shutdown(self) -> None:
        """Stop every server and router recorded under the state directory, and forget their routes."""
        for env_dir in self._environment_dirs(None):
            with self._lock(env_dir.name):
                for record_file in sorted(env_dir.glob("servers/*/*/server.json")):
                    self._stop_server(record_file.parent)
                self._routers.stop(env_dir.name, forget=True)
                (env_dir / "routes.json").unlink(missing_ok=True)

    # ------------------------------------------------- stop, start, status

    def stop(self, environment: str | None = None) -> list[EnvironmentServing]:
        """Stop the routers and model servers (of one environment, or all), keeping their records and routes.

        Returns what ran before. Nothing is forgotten: :meth:`start`, or the
        next call that needs the environment's router, starts them again on
        the same ports.
        """
        before = self.status(environment)
        for env_dir in self._environment_dirs(environment):
            with self._lock(env_dir.name):
                for record_file in sorted(env_dir.glob("servers/*/*/server.json")):
                    record = self._record(record_file.parent)
                    if record is not None:
                        terminate(record.pid, record.process_start, grace_seconds=self.stop_grace_seconds)
                self._routers.stop(env_dir.name, forget=False)
        return before

    def start(self, environment: str | None = None) -> list[EnvironmentServing]:
        """Start the stopped routers (on their last port) and every recorded server that does not run.

        Raises :class:`ServingError` for the first environment that cannot
        start (its port held by someone else, a server that does not get
        ready); the environments before it are started.
        """
        for env_dir in self._environment_dirs(environment):
            record = self._routers.record(env_dir.name)
            chosen = self._routers.chosen_port(env_dir.name)
            if record is None and chosen is None and not (env_dir / "routes.json").exists():
                continue  # nothing ever served here
            # The port it had: chosen by us (then free to move), or the spec's (then it must be that one).
            port = None if record is None or record.port == chosen else record.port
            name = env_dir.name
            with self._lock(name):
                self._ensure_router(Environment(name=name, spec_path=f"environments/{name}.yaml", port=port))
                self._revive_servers(name)  # servers that died while the router ran on
        return self.status(environment)

    def status(self, environment: str | None = None) -> list[EnvironmentServing]:
        """What serves each environment (or one): router port and process, routes, recorded servers."""
        result = []
        for env_dir in self._environment_dirs(environment):
            router = self._routers.record(env_dir.name)
            alive = router is not None and is_alive(router.pid, router.process_start)
            port = router.port if router is not None else self._routers.chosen_port(env_dir.name)
            routes = self._routes(env_dir.name)
            servers = []
            for record_file in sorted(env_dir.glob("servers/*/*/server.json")):
                record = ProcessRecord.load(record_file)
                if record is None:
                    continue
                running = is_alive(record.pid, record.process_start)
                route = routes.get(record.model, {}).get(record.version)
                servers.append(
                    ServerState(
                        model=record.model,
                        version=record.version,
                        url=record.url,
                        metrics_url=record.metrics_url,
                        pid=record.pid if running else None,
                        running=running,
                        weight=None if route is None else route[1],
                    )
                )
            result.append(
                EnvironmentServing(
                    environment=env_dir.name,
                    port=port,
                    router_pid=router.pid if alive and router is not None else None,
                    routes={m: {v: w for v, (_, w) in vs.items()} for m, vs in routes.items()},
                    servers=tuple(servers),
                )
            )
        return result

    def _environment_dirs(self, environment: str | None) -> list[Path]:
        if environment is not None:
            _check_names(environment)
        if not self.state_dir.is_dir():
            return []
        return sorted(
            p for p in self.state_dir.iterdir()
            if p.is_dir() and _NAME.match(p.name) and (environment is None or p.name == environment)
        )

    # --------------------------------------------------------------- servers

    def _server_dir(self, environment: str, model: str, version: str) -> Path:
        return self.state_dir / environment / "servers" / model / version

    def _record(self, server_dir: Path) -> ProcessRecord | None:
        """The server's record; its processes found again when a crash left it unsettled (:func:`.settle`)."""
        record = ProcessRecord.load(server_dir / "server.json")
        if record is None or not (record.superseded or (record.pid is None and record.instance)):
            return record
        settled = settle(record, grace_seconds=self.stop_grace_seconds)
        if settled.pid is not None and record.pid is None:
            log.info("adopted the server of %s %s launched before a restart (pid %d)",
                     record.model, record.version, settled.pid)
        settled.save(server_dir / "server.json")
        return settled

    def _live_server(self, environment: str, model: str, version: str) -> ProcessRecord | None:
        record = self._record(self._server_dir(environment, model, version))
        if record is None or not is_alive(record.pid, record.process_start):
            return None
        return record

    def _venv_for(self, version: ServedVersion) -> Path | None:
        runtime = version.serving.runtime
        if version.environment is None:
            if runtime == "custom":
                return None  # the controller's own PATH
            raise ServingError(
                f"version {version.version} of {version.model}: the {runtime} runtime needs the model's "
                "environment"
            )
        if self._venvs is None:
            raise ServingError(
                f"cannot build the serving environment of {version.model}: this serving backend was "
                "given no virtualenv cache"
            )
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
        like = ProcessRecord(
            pid=None, process_start=None, port=plan.port, started_at=0.0,
            model=version.model, version=version.version, runtime=version.serving.runtime,
        )
        return self._launch(plan, like=like, server_dir=server_dir)

    def _launch(self, plan: LaunchPlan, *, like: ProcessRecord, server_dir: Path) -> ProcessRecord:
        """Start ``plan`` for the model and version of ``like``: its intent (with the plan and a fresh
        instance token) is saved before the launch, its pid after."""
        log_file = server_dir / "server.log"
        record_file = server_dir / "server.json"
        with open(log_file, "ab") as handle:
            handle.write(f"--- {self._clock.now():%Y-%m-%dT%H:%M:%SZ} starting {list(plan.argv)}\n".encode())
        intent = ProcessRecord(
            kind="server",
            pid=None,
            process_start=None,
            port=plan.port,
            metrics_port=plan.metrics_port,
            grpc_port=plan.grpc_port,
            started_at=self._clock.timestamp(),
            model=like.model,
            version=like.version,
            runtime=like.runtime,
            log=str(log_file),
            argv=tuple(plan.argv),
            cwd=str(plan.cwd),
            env=dict(plan.env),
            instance=new_instance(),
            superseded=superseding(ProcessRecord.load(record_file)),
        )
        intent.save(record_file)
        pid = launch(plan.argv, cwd=plan.cwd, env={**plan.env, INSTANCE_ENV: intent.instance}, log=log_file)
        record = dataclasses.replace(intent, pid=pid, process_start=process_start_time(pid))
        record.save(record_file)
        return record

    def _relaunch(self, record: ProcessRecord, plan: LaunchPlan, server_dir: Path) -> None:
        """Start a stopped server again as it was recorded (same command, environment and ports)."""
        self._wait_ready(self._launch(plan, like=record, server_dir=server_dir), server_dir)

    def _wait_ready(self, record: ProcessRecord, server_dir: Path) -> None:
        """Return once the server answers ready, as ours; else stop it, forget it and say why.

        A port another process holds is a :class:`PortInUse` naming it and the
        holder; any other failure a :class:`ServingError` with the log tail.
        """
        deadline = time.monotonic() + self.ready_timeout_seconds
        delay = 0.02
        what = f"the server of {record.model} {record.version}"
        while True:
            if is_ready(record.url, record.model):
                foreign = foreign_answer(record)
                if foreign is None:
                    return
                self._stop_server(server_dir, keep_dir=True)
                raise PortInUse(f"{what} cannot listen: {foreign}", port=record.port)
            alive = is_alive(record.pid, record.process_start)
            if not alive or time.monotonic() >= deadline:
                self._stop_server(server_dir, keep_dir=True)
                holder = next(filter(None, (port_holder(port) for port in record.ports)), None)
                if holder is not None:
                    message = f"{what} cannot listen: {holder.describe()}"
                    raise PortInUse(message, port=holder.port, holder=holder)
                why = "exited before it was ready" if not alive else (
                    f"was not ready after {self.ready_timeout_seconds:g}s"
                )
                tail = log_tail(server_dir / "server.log")
                raise ServingError(f"{what} {why} (port {record.port}); log tail:\n{tail}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _stop_server(self, server_dir: Path, *, keep_dir: bool = False) -> None:
        record = ProcessRecord.load(server_dir / "server.json")
        if record is not None:
            stop_recorded(record, grace_seconds=self.stop_grace_seconds)
        if keep_dir:
            (server_dir / "server.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(server_dir, ignore_errors=True)

    def _revive(self, environment: str, model: str, version: str) -> ProcessRecord | None:
        """A stopped server started again as it was recorded (stopped, or died); None without a record."""
        server_dir = self._server_dir(environment, model, version)
        with self._lock(environment, model, version):
            record = self._record(server_dir)
            if record is None or record.plan is None:
                return None
            if is_alive(record.pid, record.process_start):
                return record
            log.info("%s: starting %s %s again on port %d", environment, model, version, record.port)
            self._relaunch(record, record.plan, server_dir)
            return ProcessRecord.load(server_dir / "server.json")

    def _revive_servers(self, environment: str) -> None:
        """Start again every stopped server recorded in ``environment`` (its router was just started)."""
        for record_file in sorted((self.state_dir / environment).glob("servers/*/*/server.json")):
            model, version = record_file.parent.parent.name, record_file.parent.name
            lock = self._lock_object(environment, model, version)
            if not lock.acquire(blocking=False):
                continue  # being deployed or revived right now
            try:
                self._revive(environment, model, version)
            except ServingError as exc:
                log.error("%s: %s %s could not start again: %s", environment, model, version, exc)
            finally:
                lock.release()

    # ---------------------------------------------------------------- router

    def _routes(self, environment: str) -> dict[str, dict[str, tuple[str, int]]]:
        return self._routers.routes(environment)

    def _ensure_router(self, environment: Environment) -> ProcessRecord:
        """Our router of ``environment``; when it was started now, its stopped servers start again too."""
        with self._lock(environment.name):
            router, started = self._routers.ensure(environment)
            if started:
                self._revive_servers(environment.name)
            return router

    # ----------------------------------------------------------------- locks

    def _lock_object(self, *key: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    @contextlib.contextmanager
    def _lock(self, *key: str) -> Iterator[None]:
        with self._lock_object(*key):
            yield


def _ports_free(record: ProcessRecord) -> bool:
    return all(port_holder(port) is None for port in record.ports)


def _check_names(*names: str) -> None:
    for name in names:
        if not _NAME.match(name):
            raise ServingError(f"{name!r} is not a valid environment, model or version name here")

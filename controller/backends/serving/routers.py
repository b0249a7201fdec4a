"""The embedded home's routers: one weighted router process per environment, started and found again.

:class:`~controller.backends.serving.local.LocalServing` keeps one
:class:`Routers` and calls it, under the environment's lock, whenever an
environment's router is needed (deploy, routing, endpoint, metrics). Records
under the state directory::

    <state>/<environment>/router.json        the router's ProcessRecord (pid, port, instance, admin token)
    <state>/<environment>/endpoint.json      the port chosen for the router when the spec names none
    <state>/<environment>/routes.json        the routes, written by the router itself (:mod:`.router`)
    <state>/<environment>/router.log

Ports. The router of an environment listens on ``Environment.port`` when the
spec sets one; when that port is held by another process, that is a
:class:`~.server.PortInUse` error naming the port and the holder, never
silently replaced. Without ``port:``, a free port is chosen the first time and
kept in ``endpoint.json``, so the endpoint stays the same across restarts and
two state directories (two repositories) on one machine never collide; should
another process take that port while the router is stopped, a new one is
chosen and the move is logged.

Identity. A router is launched with a random instance identity, recorded in
``router.json`` before the launch with its port and admin token, given to the
router as ``--instance`` and ``FLYWHEEL_INSTANCE``, and echoed at
``/healthz``: a router (or anything else) answering on the port with another
identity is someone else's, never adopted and never sent our admin calls
(which carry the admin token, given to the router in its environment and to
no one else). A controller killed around the launch finds its router again
by that identity, even before the router answers (:func:`.server.settle`), so
it waits for it instead of launching a second one; a launch it replaced that
still runs is stopped (:func:`.server.stop_recorded`).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.backends.local.processes import (
    INSTANCE_ENV,
    is_alive,
    new_instance,
    process_start_time,
    scrubbed_environment,
)
from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.router import TOKEN_ENV, load_routes
from controller.backends.serving.server import (
    PortHolder,
    PortInUse,
    ProcessRecord,
    free_port,
    http_json,
    launch,
    log_tail,
    port_holder,
    serving_may_see,
    settle,
    stop_recorded,
    superseding,
)
from controller.clock import Clock
from controller.drift import PROFILE_FILE
from controller.specs.types import Environment

__all__ = ["Routers"]

log = logging.getLogger("flywheel.serving")

_LAUNCH_ATTEMPTS = 3


class Routers:
    """The routers of the environments under ``state_dir``; see the module docstring."""

    def __init__(self, state_dir: Path, *, stop_grace_seconds: float, clock: Clock) -> None:
        self.state_dir = state_dir
        self.stop_grace_seconds = stop_grace_seconds
        self._clock = clock

    def routes(self, environment: str) -> dict[str, dict[str, tuple[str, int]]]:
        """The routes the router of ``environment`` keeps: model -> version -> (server URL, percent)."""
        try:
            return load_routes(self.state_dir / environment / "routes.json")
        except (ValueError, ServingError):
            return {}

    def ensure(self, environment: Environment) -> tuple[ProcessRecord, bool]:
        """Our router of ``environment``, answering as ours on its port, and whether it was started now.

        The caller holds the environment's lock, and starts again the servers
        the router routes to when it was started now.
        """
        env_dir = self.state_dir / environment.name
        record = ProcessRecord.load(env_dir / "router.json")
        adopted = record is not None and (record.pid is None or bool(record.superseded))
        if record is not None and adopted:
            record = self._adopt_router(record, env_dir)  # launched just before a crash?
        if record is not None and is_alive(record.pid, record.process_start):
            wait = 30.0 if adopted else 5.0  # a router adopted by its token may still be starting
            if environment.port in (None, record.port) and self._answers_as_ours(record, wait=wait):
                if environment.port is None:
                    self._remember_port(env_dir, record.port)
                return record, False
            if environment.port not in (None, record.port):  # the spec moved it
                holder = port_holder(environment.port)
                if holder is not None:  # keep serving on the old port meanwhile
                    raise _port_error(environment, holder)
            self.stop(environment.name, forget=True)
        return self._start_router(environment, env_dir), True

    def _adopt_router(self, record: ProcessRecord, env_dir: Path) -> ProcessRecord | None:
        """The router of an unsettled record: found by the token it carries (and routers it replaced
        stopped), or, for a router launched without one, answering ``/healthz`` with the recorded
        identity; None when it does not run (the record is kept: it may supersede a late launch)."""
        settled = settle(record, grace_seconds=self.stop_grace_seconds)
        if settled != record:
            settled.save(env_dir / "router.json")
        if settled.pid is not None:
            return settled
        status, answer = http_json(record.url, "/healthz")
        if status == 200 and isinstance(answer, dict) and answer.get("instance") == record.instance:
            pid = answer.get("pid")
            if isinstance(pid, int):
                adopted = dataclasses.replace(record, pid=pid, process_start=process_start_time(pid))
                adopted.save(env_dir / "router.json")
                return adopted
        return None

    def _answers_as_ours(self, record: ProcessRecord, *, wait: float) -> bool:
        """Whether the router's port answers with the recorded identity (waiting while nothing answers)."""
        deadline = time.monotonic() + wait
        while True:
            status, answer = http_json(record.url, "/healthz")
            if status is not None:  # anything that answers without our identity is not our router
                ours = isinstance(answer, dict) and answer.get("instance") == record.instance
                return status == 200 and bool(record.instance) and ours
            if not is_alive(record.pid, record.process_start) or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _start_router(self, environment: Environment, env_dir: Path) -> ProcessRecord:
        env_dir.mkdir(parents=True, exist_ok=True)
        explicit = environment.port
        port = explicit or self._chosen_port(env_dir) or free_port()
        for _ in range(_LAUNCH_ATTEMPTS):
            holder = port_holder(port)
            if holder is None:
                try:
                    record = self._launch_router(environment.name, env_dir, port)
                except PortInUse as exc:
                    holder = exc.holder or PortHolder(port=port)
                else:
                    if explicit is None:
                        self._remember_port(env_dir, port)
                    log.info(
                        "%s serves on %s (OIP v2: POST %s/v2/models/<model>/infer)",
                        environment.name, record.url, record.url,
                    )
                    return record
            if explicit is not None:
                raise _port_error(environment, holder)
            moved = free_port()
            log.warning("the router of %s moves to port %d: %s", environment.name, moved, holder.describe())
            port = moved
        raise ServingError(f"the router of {environment.name} found no free port to listen on")

    def _launch_router(self, environment: str, env_dir: Path, port: int) -> ProcessRecord:
        """Record the intent (port, identity, token), launch the router, and wait until it answers as ours."""
        log_file = env_dir / "router.log"
        record = ProcessRecord(
            kind="router",
            pid=None,
            process_start=None,
            port=port,
            started_at=self._clock.timestamp(),
            log=str(log_file),
            token=secrets.token_urlsafe(24),
            instance=new_instance(),
            superseded=superseding(ProcessRecord.load(env_dir / "router.json")),
            environment=environment,
        )
        record.save(env_dir / "router.json")
        argv = [
            sys.executable, "-m", "controller.backends.serving.router",
            "--port", str(port),
            "--state", str(env_dir / "routes.json"),
            "--environment", environment,
            "--instance", record.instance,
        ]
        env = scrubbed_environment(keep=_router_may_see)
        env[TOKEN_ENV] = record.token
        env[INSTANCE_ENV] = record.instance
        pid = launch(argv, cwd=env_dir, env=env, log=log_file)
        record = dataclasses.replace(record, pid=pid, process_start=process_start_time(pid))
        record.save(env_dir / "router.json")
        deadline = time.monotonic() + 30.0
        while True:
            status, answer = http_json(record.url, "/healthz")
            if status == 200 and isinstance(answer, dict) and answer.get("instance") == record.instance:
                return record
            if status is not None:  # something else answers on the port: never ours
                self.stop(env_dir.name, forget=True)
                holder = port_holder(port)
                if holder is None and isinstance(answer, dict) and isinstance(answer.get("pid"), int):
                    holder = PortHolder(port=port, pid=answer["pid"], command="another Flywheel router")
                raise PortInUse(f"port {port} answers as someone else", port=port, holder=holder)
            if not is_alive(record.pid, record.process_start):
                self.stop(env_dir.name, forget=True)
                holder = port_holder(port)
                if holder is not None:
                    raise PortInUse(holder.describe(), port=port, holder=holder)
                raise ServingError(
                    f"the router of {environment} exited before it answered on port {port}; "
                    f"log tail:\n{log_tail(log_file)}"
                )
            if time.monotonic() >= deadline:
                self.stop(env_dir.name, forget=True)
                raise ServingError(
                    f"the router of {environment} did not answer on port {port} in 30s; "
                    f"log tail:\n{log_tail(log_file)}"
                )
            time.sleep(0.02)

    def record(self, environment: str) -> ProcessRecord | None:
        """The recorded router of ``environment``, running or not; None when none was started."""
        return ProcessRecord.load(self.state_dir / environment / "router.json")

    def stop(self, environment: str, *, forget: bool) -> None:
        """Stop the router of ``environment`` (and any launch its record replaced); with ``forget``, drop
        its record too (not its port)."""
        env_dir = self.state_dir / environment
        record = ProcessRecord.load(env_dir / "router.json")
        if record is not None:
            stop_recorded(record, grace_seconds=self.stop_grace_seconds)
        if forget:
            (env_dir / "router.json").unlink(missing_ok=True)

    def chosen_port(self, environment: str) -> int | None:
        """The port chosen for the router of ``environment`` when its spec names none."""
        return self._chosen_port(self.state_dir / environment)

    def _chosen_port(self, env_dir: Path) -> int | None:
        try:
            port = json.loads((env_dir / "endpoint.json").read_text()).get("port")
        except (OSError, ValueError, AttributeError):
            return None
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def _remember_port(self, env_dir: Path, port: int) -> None:
        if self._chosen_port(env_dir) == port:
            return
        tmp = env_dir / ".endpoint.json.tmp"
        tmp.write_text(json.dumps({"port": port}) + "\n")
        os.replace(tmp, env_dir / "endpoint.json")

    def put_routes(self, router: ProcessRecord, model: str, versions: Mapping[str, tuple[str, int]]) -> None:
        """Route ``model``: version -> (server URL, percent); an empty mapping stops routing it."""
        if versions:
            body = {"versions": {v: {"url": url, "weight": w} for v, (url, w) in versions.items()}}
            self._admin(router, "PUT", f"/-/routes/{model}", body)
        else:
            self._admin(router, "DELETE", f"/-/routes/{model}")

    def watch_drift(self, router: ProcessRecord, version: ServedVersion) -> None:
        """Have the router watch ``version`` for drift, when its artifact carries a reference profile.

        A profile the router cannot read is logged and the version served unwatched: drift monitoring
        never stops a deploy.
        """
        profile = Path(version.artifact_uri) / PROFILE_FILE
        if not profile.is_file():
            return
        body = {"profile": str(profile.resolve()), "settings": version.serving.drift.to_json()}
        try:
            self._admin(router, "PUT", f"/-/drift/{version.model}/{version.version}", body)
        except ServingError as exc:
            log.warning("%s %s is served without drift monitoring: %s", version.model, version.version, exc)

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


def _router_may_see(name: str) -> bool:
    """The router's environment: the serving allow-list, and PYTHONPATH (it imports this package)."""
    return serving_may_see(name) or name == "PYTHONPATH"


def _port_error(environment: Environment, holder: PortHolder) -> PortInUse:
    return PortInUse(
        f"the router of {environment.name} cannot listen: {holder.describe()}; stop that "
        f"process, or set another serving.port in {environment.spec_path}",
        port=holder.port,
        holder=holder,
    )

"""Reading what actually serves an environment on the embedded home, from its router and its servers.

:meth:`LocalServing.observe <controller.backends.serving.local.LocalServing.observe>`
delegates here; the serving watch (:mod:`controller.engine.observed`) calls
it on start and every tick. It only reads and starts nothing:

* the routes come from the running router itself, over its admin API
  (``GET /-/routes`` with the admin token of ``router.json``), never from the
  routes file it keeps: what the router routes is what serves;
* a version is *live* when its recorded server process runs (the pid with the
  recorded start time) and answers both OIP v2 readiness routes.

A router that is recorded but not running, does not answer, or answers as
someone else makes the observation *unknown*, with the reason, never empty.
An environment where no router was ever started and no routes were ever kept
is known to route nothing.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from controller.backends.local.processes import is_alive
from controller.backends.serving import ObservedServing
from controller.backends.serving.server import ProcessRecord, is_ready

__all__ = ["observe_local"]


def observe_local(state_dir: Path, environment: str, *, timeout: float = 2.0) -> ObservedServing:
    """What serves ``environment`` under ``state_dir`` now: the router's routes and the live servers."""
    env_dir = state_dir / environment
    router = ProcessRecord.load(env_dir / "router.json")
    if router is None:
        if (env_dir / "routes.json").exists():
            return _unknown(environment, f"no router of {environment} is recorded, but routes were kept")
        return ObservedServing(environment=environment, live=_live(env_dir, timeout=timeout))
    if router.pid is None or not is_alive(router.pid, router.process_start):
        return _unknown(environment, f"the router of {environment} is not running (port {router.port})")
    routes, why = _routes(router, environment, timeout=timeout)
    if routes is None:
        return _unknown(environment, why)
    return ObservedServing(environment=environment, routes=routes, live=_live(env_dir, timeout=timeout))


def _unknown(environment: str, why: str) -> ObservedServing:
    return ObservedServing(environment=environment, unknown=why)


def _routes(
    router: ProcessRecord, environment: str, *, timeout: float
) -> tuple[dict[str, dict[str, int]] | None, str]:
    """The router's routes (model -> version -> percent), or None and why they could not be read."""
    where = f"the router of {environment} on port {router.port}"
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=timeout)
    try:
        connection.request("GET", "/-/routes", headers={"Authorization": f"Bearer {router.token}"})
        response = connection.getresponse()
        body = response.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{where} does not answer ({exc})"
    finally:
        connection.close()
    if response.status != 200:
        return None, f"{where} refused GET /-/routes ({response.status})"
    try:
        document: Any = json.loads(body)
    except ValueError:
        return None, f"{where} answered GET /-/routes with something other than JSON"
    if not isinstance(document, dict) or document.get("environment") != environment:
        return None, f"{where} answers for another environment"
    found: dict[str, dict[str, int]] = {}
    for model, table in (document.get("routes") or {}).items():
        versions = table.get("versions") if isinstance(table, dict) else None
        if not isinstance(versions, dict):
            return None, f"{where} answered routes of {model} that cannot be read"
        found[model] = {
            version: int(route.get("weight", 0)) if isinstance(route, dict) else 0
            for version, route in versions.items()
        }
    return found, ""


def _live(env_dir: Path, *, timeout: float) -> dict[str, frozenset[str]]:
    """Model -> the versions whose recorded server runs and answers ready."""
    live: dict[str, set[str]] = {}
    for record_file in sorted(env_dir.glob("servers/*/*/server.json")):
        record = ProcessRecord.load(record_file)
        if record is None or record.pid is None or not is_alive(record.pid, record.process_start):
            continue
        if is_ready(record.url, record.model, timeout=timeout):
            live.setdefault(record.model, set()).add(record.version)
    return {model: frozenset(versions) for model, versions in live.items()}

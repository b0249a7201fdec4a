"""The controller's health endpoint: ``GET /healthz`` on ``FLYWHEEL_HEALTH_PORT``, beside the loop.

:func:`controller.cli.run.start` runs :func:`health_endpoint` for ``flywheel run`` and ``flywheel
serve`` when the port is set (uvicorn in a thread, like the webhook service). It answers 200 while
the controller's loop has turned within the settings' ``stale_seconds`` by the controller's clock
(:attr:`controller.app.Controller.last_turn`), 503 before the first turn and once the loop is stuck;
Kubernetes' readiness and liveness probes ask it (``deploy/``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import click
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from controller.clock import Clock

if TYPE_CHECKING:
    from controller.app import Controller
    from controller.settings import Settings


def health_app(last_turn: Callable[[], datetime | None], clock: Clock, *, stale_seconds: float) -> Starlette:
    """``GET /healthz``: 200 when ``last_turn()`` is at most ``stale_seconds`` before ``clock.now()``."""

    async def healthz(_request: Request) -> JSONResponse:
        turned = last_turn()
        now = clock.now()
        if turned is None:
            return JSONResponse({"status": "starting", "lastTurn": None}, status_code=503)
        age = (now - turned).total_seconds()
        body = {"lastTurn": turned.isoformat(), "ageSeconds": round(age, 3)}
        if age > stale_seconds:
            return JSONResponse({"status": "stalled", **body}, status_code=503)
        return JSONResponse({"status": "ok", **body})

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])


@contextmanager
def health_endpoint(settings: Settings, controller: Controller) -> Iterator[None]:
    """Serve the controller's ``/healthz`` while the block runs, when ``settings.health.port`` is set.

    The port is bound here, so one already in use ends the start in one line.
    """
    health = settings.health
    if not health.port:
        yield
        return
    import uvicorn

    try:
        sock = socket.create_server((health.host, health.port), reuse_port=False)
    except OSError as exc:
        raise click.ClickException(
            f"FLYWHEEL_HEALTH_PORT: cannot listen on {health.host}:{health.port}: {exc.strerror or exc}"
        ) from None
    app = health_app(lambda: controller.last_turn, controller.clock, stale_seconds=health.stale_seconds)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

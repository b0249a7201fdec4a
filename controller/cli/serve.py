"""``flywheel serve``: the webhook service and the controller in one process; ``--no-controller``: a receiver.

The webhook service (:mod:`webhooks.app`, uvicorn in a thread,
:func:`webhook_service`) verifies GitHub deliveries (and Slack button
presses, when a Slack signing secret is set), writes them to the inbox and
answers at once; the controller loop, in the main thread, handles them from
the inbox: pull requests and pushes make it fetch and reconcile the
proposals they name, comment commands and button presses run under main's
policy. Polling goes on as the fallback for missed deliveries. The same
settings and wiring as ``flywheel run`` (:func:`controller.cli.run.start`),
with the service's address added and the service run alongside.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from controller.cli.options import run_options
from controller.cli.run import load, start

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from controller.app import Controller
    from controller.backends.store.sql import SqlStore
    from controller.clock import Clock
    from controller.settings import Settings


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the webhook service listens on."
)
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the webhook service.")
@click.option(
    "--no-controller",
    "receive_only",
    is_flag=True,
    help="Serve the webhooks and the dashboard only: a receiver writing to the shared inbox, "
    "with the controllers running apart (flywheel run).",
)
@run_options
def serve(host: str, port: int, receive_only: bool, log_format: str, verbose: bool, **options: Any) -> None:
    """Serve POST /hooks/github (and /hooks/slack/actions), the dashboard at /ui/, and run the controller."""
    settings = load(options, webhooks=(host, port))
    if receive_only:
        raise SystemExit(receive(settings, log_format=log_format, verbose=verbose))
    raise SystemExit(start(settings, log_format=log_format, verbose=verbose, alongside=webhook_service))


def receive(settings: Settings, *, log_format: str, verbose: bool) -> int:
    """Serve the webhook service (and the dashboard) in the foreground, with no controller.

    A receiver verifies deliveries and writes them to the store's inbox, which
    the leading controller consumes: any number of receivers may run on one
    PostgreSQL (``FLYWHEEL_DATABASE_URL``). It takes no lock, mirrors nothing
    and runs no loop; SIGTERM or SIGINT stops it (exit 0; 1 when the service
    could not start, e.g. its port is taken).
    """
    import uvicorn
    from starlette.routing import Mount

    from controller.backends.store import open_store
    from controller.clock import SYSTEM_CLOCK
    from controller.logs import setup_logging
    from webhooks.app import create_app

    hooks = settings.webhooks
    assert hooks is not None
    setup_logging("json" if log_format == "json" else "text", verbose=verbose)
    store = open_store(settings.store_location, clock=SYSTEM_CLOCK)
    try:
        app = create_app(hooks, store, clock=SYSTEM_CLOCK)
        app.routes.append(Mount("/ui", app=_dashboard(settings, store, SYSTEM_CLOCK)))
        click.echo(
            f"webhooks on http://{hooks.host}:{hooks.port}/hooks/github, "
            f"dashboard on http://{hooks.host}:{hooks.port}/ui/ (no controller here)"
        )
        config = uvicorn.Config(app, host=hooks.host, port=hooks.port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="webhooks", daemon=True)  # its own signals: ours
        stop = threading.Event()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
        thread.start()
        while not stop.wait(0.5) and thread.is_alive():
            pass
        server.should_exit = True
        thread.join(timeout=10)
        return 0 if server.started or stop.is_set() else 1
    finally:
        store.close()


@contextmanager
def webhook_service(settings: Settings, controller: Controller) -> Iterator[None]:
    """Serve the webhooks (uvicorn, in a thread) while the block runs, when ``settings`` has them.

    The service verifies deliveries and writes them to the inbox, through its
    own connection to the store (it is called from uvicorn's worker threads),
    and judges the age of Slack's requests on the controller's clock.
    """
    hooks = settings.webhooks
    if hooks is None:
        yield
        return
    import uvicorn
    from starlette.routing import Mount

    from controller.backends.serving.drift_source import ServedDrift
    from controller.backends.store import open_store
    from webhooks.app import create_app

    web_store = open_store(settings.store_location, clock=controller.clock)
    drift = controller.triggers.drift if controller.triggers is not None else None
    gauges = [drift.cluster] if isinstance(drift, ServedDrift) and drift.cluster is not None else []
    app = create_app(hooks, web_store, clock=controller.clock, collectors=gauges)  # the cluster's drift
    app.routes.append(Mount("/ui", app=_dashboard(settings, web_store, controller.clock)))
    config = uvicorn.Config(app, host=hooks.host, port=hooks.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="webhooks", daemon=True)
    thread.start()
    click.echo(
        f"webhooks on http://{hooks.host}:{hooks.port}/hooks/github, "
        f"dashboard on http://{hooks.host}:{hooks.port}/ui/; "
        f"controller watching {settings.controller.repo}"
    )
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        web_store.close()


def _dashboard(settings: Settings, store: SqlStore, clock: Clock) -> Starlette:
    """The web dashboard over the service's store, reading main's specs on a repository handle of its own."""
    from controller.cli.ui import access_for, dashboard, main_specs

    ours = settings.controller
    catalog = main_specs(ours.repo, ours.release_branch, ours.state_dir, required=False)
    github = settings.github.repository if settings.github is not None else None
    host = settings.webhooks.host if settings.webhooks is not None else "0.0.0.0"
    return dashboard(
        store,
        clock=clock,
        catalog=catalog,
        github_repository=github,
        access=access_for(host, sign_in=None, store=store),  # in the cluster: a proxy's header, or a token
    )

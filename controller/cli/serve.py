"""``flywheel serve``: the webhook service and the controller in one process.

The webhook service (:mod:`webhooks.app`, uvicorn in a thread) verifies
GitHub deliveries (and Slack button presses, when a Slack signing secret is
set) and writes them to the inbox; the controller loop, in the main thread,
handles them: pull requests and pushes make it fetch and reconcile at once,
comment commands run under main's policy. Polling goes on as the fallback for
missed deliveries. The same settings and wiring as ``flywheel run``
(:func:`controller.cli.run.start`), with the service's address added.
"""

from __future__ import annotations

from typing import Any

import click

from controller.cli.options import run_options
from controller.cli.run import load, start


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the webhook service listens on."
)
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the webhook service.")
@run_options
def serve(host: str, port: int, log_format: str, verbose: bool, **options: Any) -> None:
    """Serve POST /hooks/github (and /hooks/slack/actions) and run the controller on the same state."""
    settings = load(options, webhooks=(host, port))
    raise SystemExit(start(settings, log_format=log_format, verbose=verbose))

"""``flywheel serve``: the webhook service and the controller in one process.

The webhook service (:mod:`webhooks.app`, uvicorn in a thread) verifies
GitHub deliveries (and Slack button presses, when a Slack signing secret is
set) and writes them to the inbox; the controller loop, in the main thread,
handles them: pull requests and pushes make it fetch and reconcile at once,
comment commands run under main's policy. Polling goes on as the fallback for
missed deliveries.
"""

from __future__ import annotations

import threading
from pathlib import Path

import click

from controller.cli.run import controller_settings, open_controller, run_options, state_lock


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the webhook service listens on."
)
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the webhook service.")
@run_options
def serve(
    host: str,
    port: int,
    repo: str,
    interval: float,
    release_branch: str | None,
    max_runs: int,
    log_format: str,
    venv_dir: Path | None,
    verbose: bool,
    state_dir: Path,
) -> None:
    """Serve POST /hooks/github (and /hooks/slack/actions) and run the controller on the same state."""
    import uvicorn

    from controller.app import run_controller
    from controller.backends.store import open_store
    from controller.engine.commands import Commands
    from controller.logs import setup_logging
    from webhooks.app import create_app
    from webhooks.events import attach_github_events
    from webhooks.settings import SettingsError, WebhookSettings

    setup_logging("json" if log_format == "json" else "text", verbose=verbose)
    try:
        webhook_settings = WebhookSettings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = controller_settings(
        repo=repo,
        state_dir=state_dir,
        interval_seconds=interval,
        max_active_runs=max_runs,
        release_branch=release_branch,
        venv_dir=venv_dir,
    )
    with state_lock(state_dir) as fresh:
        controller = open_controller(settings, fresh=fresh)
        attach_github_events(controller)
        # The web service gets its own store connection; it is called from uvicorn's worker threads.
        web_store = open_store(settings.state_dir, clock=controller.clock)
        web_commands = Commands(store=web_store, catalog=controller.main_catalog, clock=controller.clock)
        app = create_app(webhook_settings, web_store, commands=web_commands)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="webhooks", daemon=True)
        thread.start()
        click.echo(f"webhooks on http://{host}:{port}/hooks/github; controller watching {repo}")
        try:
            code = run_controller(settings, controller=controller)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            web_store.close()
    raise SystemExit(code)

"""``flywheel serving ls|stop|start``: the embedded home's routers and model servers.

Each parses its options and calls one method of
:class:`~controller.backends.serving.local.LocalServing` on
``STATE_DIR/serving``; none reads the repository or writes the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import state_dir_option

if TYPE_CHECKING:
    from controller.backends.serving.local import EnvironmentServing, LocalServing

env_option = click.option("--env", "environment", default=None, help="Only this environment.")

STOP_NOTE = (
    "The store is unchanged: it still says which version should serve where. "
    "`flywheel serving start`, or the controller's next step that needs an environment "
    "(a rollout's deploy, canary analysis or promotion), starts its router and servers again "
    "on the same ports; a canary gets no traffic while stopped, so its analysis holds rather than promote."
)


@click.group()
def serving() -> None:
    """The routers and model servers of the embedded home (they outlive the controller)."""


@serving.command("ls")
@env_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of environments.")
@state_dir_option
def list_serving(environment: str | None, as_json: bool, state_dir: Path) -> None:
    """Each environment's endpoint, whether its router runs, the models it routes and their servers."""
    statuses = _call(state_dir, lambda backend: backend.status(environment))
    if as_json:
        click.echo(json.dumps([status.to_json() for status in statuses], indent=2, sort_keys=True))
        return
    if not statuses:
        click.echo(f"nothing has served from {state_dir}")
        return
    for status in statuses:
        router = f"running (pid {status.router_pid})" if status.running else "stopped"
        click.echo(f"{status.environment:<14}{status.endpoint or '-':<26}router {router}")
        for model in sorted({*status.routes, *(s.model for s in status.servers)}):
            weights = status.routes.get(model, {})
            servers = {s.version: s for s in status.servers if s.model == model}
            parts = []
            for version in sorted({*weights, *servers}, key=_version_order):
                server = servers.get(version)
                state = "running" if server is not None and server.running else "stopped"
                weight = f"{weights[version]}%" if version in weights else "not routed"
                parts.append(f"{version} {weight} ({state})")
            url = f"{status.endpoint}/v2/models/{model}" if status.endpoint else "-"
            click.echo(f"  {model:<12}{url:<50}{', '.join(parts)}")


@serving.command()
@click.argument("environment")
@click.argument("model", required=False)
@state_dir_option
def url(environment: str, model: str | None, state_dir: Path) -> None:
    """Print ENVIRONMENT's endpoint, or MODEL's base URL there (append /infer for OIP v2 inference)."""
    statuses = _call(state_dir, lambda backend: backend.status(environment))
    endpoint = statuses[0].endpoint if statuses else None
    if endpoint is None:
        raise click.ClickException(f"{environment} has no endpoint in {state_dir}: nothing deployed there")
    click.echo(f"{endpoint}/v2/models/{model}" if model else endpoint)


@serving.command()
@env_option
@state_dir_option
def stop(environment: str | None, state_dir: Path) -> None:
    """Stop the routers and model servers (of one environment, or all); their routes and ports are kept."""
    stopped = _call(state_dir, lambda backend: backend.stop(environment))
    running = [s for s in stopped if s.running or any(server.running for server in s.servers)]
    if not running:
        click.echo("nothing was running")
    for status in running:
        count = sum(1 for server in status.servers if server.running)
        router = f"its router on {status.endpoint}" if status.running else "no router"
        click.echo(f"stopped {status.environment}: {router}, {count} model server(s)")
    click.echo(STOP_NOTE)


@serving.command()
@env_option
@state_dir_option
def start(environment: str | None, state_dir: Path) -> None:
    """Start the stopped routers (on their ports) and the model servers their routes send traffic to."""
    started = _call(state_dir, lambda backend: backend.start(environment))
    if not started:
        click.echo(f"nothing has served from {state_dir}")
    for status in started:
        if status.running:
            count = sum(1 for server in status.servers if server.running)
            click.echo(f"{status.environment} serves on {status.endpoint} ({count} model server(s) running)")


def _call(
    state_dir: Path, act: Callable[[LocalServing], list[EnvironmentServing]]
) -> list[EnvironmentServing]:
    """``act`` on the serving backend of ``STATE_DIR``; a serving error is one line and exit status 1."""
    from controller.backends.serving import ServingError
    from controller.backends.serving.local import LocalServing
    from controller.clock import SYSTEM_CLOCK

    try:
        return act(LocalServing(state_dir / "serving", clock=SYSTEM_CLOCK))
    except ServingError as exc:
        raise click.ClickException(str(exc)) from exc


def _version_order(label: str) -> tuple[int, str]:
    digits = label.lstrip("v")
    return (int(digits), label) if digits.isdigit() else (1 << 30, label)


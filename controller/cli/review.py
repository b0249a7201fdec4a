"""``flywheel review show``: the review reports of a proposal on the local forge."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.options import state_dir_option


@click.group()
def review() -> None:
    """Review reports of proposals (the local forge)."""


@review.command()
@click.argument("branch")
@click.option("--model", default=None, help="Only this model's report.")
@click.option("--status-only", is_flag=True, help="One line per model: state and description.")
@state_dir_option
def show(branch: str, model: str | None, status_only: bool, state_dir: Path) -> None:
    """Print the review report of BRANCH (each model it changes), as it would appear on a pull request."""
    from controller.backends.forge.local import LocalForge
    from controller.backends.store import open_store
    from controller.clock import SYSTEM_CLOCK

    store = open_store(state_dir, clock=SYSTEM_CLOCK)
    try:
        reviews = LocalForge(store).reviews(branch, model=model)
    finally:
        store.close()
    if not reviews:
        raise click.ClickException(f"no review for {branch}" + (f" and model {model}" if model else ""))
    for item in reviews:
        if status_only:
            click.echo(f"{item.model}\t{item.state}\t{item.commit[:10]}\t{item.description}")
        else:
            click.echo(f"status: {item.state} — {item.description}")
            click.echo(item.body)

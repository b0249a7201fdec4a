"""``flywheel review show``: the review reports of a proposal on the local forge."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.options import existing_store, state_dir_option


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

    with existing_store(state_dir) as store:
        reviews = LocalForge(store).reviews(branch, model=model)
    if not reviews:
        raise click.ClickException(f"no review for {branch}" + (f" and model {model}" if model else ""))
    for item in reviews:
        if status_only:
            click.echo(f"{item.model}\t{item.state}\t{item.commit[:10]}\t{item.description}")
        else:
            click.echo(f"status: {item.state} — {item.description}")
            click.echo(item.body)

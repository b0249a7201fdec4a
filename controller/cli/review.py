"""``flywheel review ls|show``: proposals and their review reports on the local forge."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import click

from controller.cli.options import (
    branch_option,
    echo_json,
    existing_store,
    given,
    json_option,
    main_catalog,
    repo_option,
    state_dir_option,
)

_repo = repo_option(
    "The GitOps repository whose main branch names the production environment; optional, read when it can be."
)


@click.group()
def review() -> None:
    """Review reports of proposals (the local forge)."""


@review.command("ls")
@click.option("--proposal", "proposal", default=None, help="Only this proposal branch.")
@_repo
@branch_option
@json_option
@state_dir_option
@click.pass_context
def list_proposals(
    ctx: click.Context, proposal: str | None, repo: str, branch: str | None, as_json: bool, state_dir: Path
) -> None:
    """Every proposal, newest first: branch, model, commit, outcome, and the version it was compared with."""
    from controller.engine.status import proposal_statuses

    with existing_store(state_dir) as store:
        catalog = main_catalog(repo, branch, state_dir, required=given(ctx, "repo"))
        found = proposal_statuses(store, branch=proposal, catalog=catalog)
    if as_json:
        echo_json([item.to_json() for item in found])
        return
    if not found:
        click.echo("no proposals reviewed yet")
        return
    click.echo(
        f"{'BRANCH':<24} {'MODEL':<16} {'COMMIT':<11} {'STATE':<8} {'VS':<5} {'UPDATED':<20} DESCRIPTION"
    )
    for item in found:
        versus = f"v{item.compared_with}" if item.compared_with is not None else "-"
        updated = item.updated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{item.branch:<24} {item.model:<16} {item.commit[:10]:<11} {item.state:<8} {versus:<5} "
            f"{updated:<20} {item.description}"
        )


@review.command()
@click.argument("branch")
@click.option("--model", default=None, help="Only this model's report.")
@click.option("--status-only", is_flag=True, help="One line per model: state and description.")
@json_option
@state_dir_option
def show(branch: str, model: str | None, status_only: bool, as_json: bool, state_dir: Path) -> None:
    """Print the review report of BRANCH (each model it changes), as it would appear on a pull request."""
    from controller.engine.status import proposal_statuses

    with existing_store(state_dir) as store:
        reviews = store.reviews(proposal=branch, model=model)
        statuses = {p.model: p for p in proposal_statuses(store, branch=branch)} if as_json else {}
    if not reviews:
        raise click.ClickException(f"no review for {branch}" + (f" and model {model}" if model else ""))
    if as_json:
        echo_json([{**statuses[item.model].to_json(), "body": item.body} for item in reviews])
        return
    for item in reviews:
        if status_only:
            click.echo(f"{item.model}\t{item.state}\t{item.commit[:10]}\t{item.description}")
        else:
            click.echo(f"status: {item.state} — {item.description}")
            click.echo(item.body)

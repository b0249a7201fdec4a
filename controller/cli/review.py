"""``flywheel review ls|show``: proposals and their review reports on the local forge."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import (
    echo_json,
    echo_rows,
    existing_store,
    json_option,
    state_dir_option,
    store_and_catalog,
    view_options,
)

if TYPE_CHECKING:
    from controller.engine.status import ProposalStatus

_options = view_options(
    "The GitOps repository whose main branch names the production environment; optional, read when it can be."
)


@click.group()
def review() -> None:
    """Review reports of proposals (the local forge)."""


@review.command("ls")
@click.option("--proposal", "proposal", default=None, help="Only this proposal branch.")
@_options
def list_proposals(
    proposal: str | None, repo: str, branch: str | None, as_json: bool, state_dir: Path
) -> None:
    """Every proposal, newest first: branch, model, commit, outcome, and the version it was compared with."""
    from controller.engine.status import proposal_statuses

    with store_and_catalog(repo, branch, state_dir) as (store, catalog):
        found = proposal_statuses(store, branch=proposal, catalog=catalog)
    echo_rows(
        found,
        as_json=as_json,
        to_json=lambda item: item.to_json(),
        empty="no proposals reviewed yet",
        header=f"{'BRANCH':<24} {'MODEL':<16} {'COMMIT':<11} {'STATE':<8} {'VS':<5} {'UPDATED':<20} "
        "DESCRIPTION",
        lines=_proposal_line,
    )


def _proposal_line(item: ProposalStatus) -> list[str]:
    versus = f"v{item.compared_with}" if item.compared_with is not None else "-"
    updated = item.updated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [
        f"{item.branch:<24} {item.model:<16} {item.commit[:10]:<11} {item.state:<8} {versus:<5} "
        f"{updated:<20} {item.description}"
    ]


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

"""``flywheel triggers [MODEL]``: each model's triggers, their last and next firing, and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import echo_rows, store_and_catalog, view_options

if TYPE_CHECKING:
    from controller.engine.trigger_status import TriggerStatus


@click.command()
@click.argument("model", required=False)
@view_options("The GitOps repository whose main branch has the models' triggers.")
def triggers(model: str | None, repo: str, branch: str | None, as_json: bool, state_dir: Path) -> None:
    """Each model's triggers (schedule, dataChange, drift): what they watch, when they last fired and
    fire next, and why (the last reason and its proposal, a skip or a failure)."""
    from controller.clock import SYSTEM_CLOCK
    from controller.engine.trigger_status import trigger_statuses

    with store_and_catalog(repo, branch, state_dir) as (store, catalog):
        if catalog is None:
            raise click.ClickException(f"cannot read the specs of {repo}; pass --repo")
        if model is not None and model not in catalog.models:
            raise click.ClickException(f"no model {model!r} on the release branch of {repo}")
        rows = trigger_statuses(store, catalog, now=SYSTEM_CLOCK.now(), model=model)
    echo_rows(
        rows,
        as_json=as_json,
        to_json=lambda row: row.to_json(),
        empty="no model has triggers" if model is None else f"{model} has no triggers",
        header=f"{'MODEL':<16} {'TRIGGER':<11} {'LAST FIRED':<20} {'NEXT':<26} WATCHES / WHY",
        lines=_lines,
    )


def _lines(row: TriggerStatus) -> list[str]:
    last = row.last_fired.strftime("%Y-%m-%d %H:%M:%S") if row.last_fired is not None else "-"
    return [
        f"{row.model:<16} {row.trigger:<11} {last:<20} {row.next:<26} {row.watches}",
        f"{'':<76} {row.why}",
    ]

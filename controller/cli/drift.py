"""``flywheel drift MODEL [--env E] [--json]``: how a served model's live inputs drift from its training data.

Finds the environments whose router (on the embedded home, under
``STATE_DIR/serving``) routes MODEL, asks each router for its drift table
(:func:`~controller.backends.serving.drift_watch.fetch_drift`) and prints it:
per version and feature, the live samples of the latest window, the PSI, the
test's p-value against its corrected threshold, and the status (``stable``,
``warn``, ``drift`` or ``not enough data``). Reads neither the repository nor
the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from controller.cli.options import state_dir_option


@click.command()
@click.argument("model")
@click.option("--env", "environment", default=None, help="Only this environment.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of environments.")
@state_dir_option
def drift(model: str, environment: str | None, as_json: bool, state_dir: Path) -> None:
    """Per feature: PSI, KS/chi-square p-value and drift status of MODEL's latest live window."""
    tables = _tables(state_dir, model, environment)
    if as_json:
        click.echo(json.dumps(tables, indent=2, sort_keys=True))
        return
    for table in tables:
        if not table["versions"]:
            click.echo(f"{table['environment']}: {model} has no version watched for drift (its train step "
                       "wrote no FLYWHEEL_REFERENCE_DATA)")
        for version in table["versions"]:
            _print_version(table["environment"], version)


def _tables(state_dir: Path, model: str, environment: str | None) -> list[dict[str, Any]]:
    from controller.backends.serving import ServingError
    from controller.backends.serving.drift_watch import fetch_drift
    from controller.backends.serving.local import LocalServing
    from controller.clock import SYSTEM_CLOCK

    try:
        statuses = LocalServing(state_dir / "serving", clock=SYSTEM_CLOCK).status(environment)
        serving = [s for s in statuses if model in s.routes]
        if not serving:
            where = f"in {environment}" if environment else "anywhere"
            raise click.ClickException(f"{model} is not served {where} from {state_dir}")
        tables = []
        for status in serving:
            if not status.running or status.endpoint is None:
                raise click.ClickException(
                    f"{status.environment}: its router is not running; `flywheel serving start "
                    f"--env {status.environment}` starts it (its drift windows start afresh)"
                )
            tables.append(fetch_drift(status.endpoint, model))
        return tables
    except ServingError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_version(environment: str, version: dict[str, Any]) -> None:
    settings = version["settings"]
    current = version["window"] == "current"
    window = "latest window" if current else "previous window (too few rows in the current one)"
    click.echo(
        f"{environment}  {version['model']} {version['version']}: {window}, {version['rows']} rows; "
        f"drift at PSI >= {settings['psi']['alert']:g} or p < threshold, at least "
        f"{settings['minSamples']} rows"
    )
    click.echo(f"  {'feature':<20}{'kind':<13}{'samples':>8}  {'psi':>7}  {'test':<5}{'p-value':>10}"
               f"{'threshold':>11}  {'status':<16}sustained")
    for row in version["features"]:
        psi = "-" if row["psi"] is None else f"{row['psi']:.4f}"
        p_value = "-" if row["p_value"] is None else f"{row['p_value']:.3g}"
        sustained = f"{row['sustained_windows']}/{settings['sustainedWindows']}"
        click.echo(
            f"  {row['feature']:<20}{row['kind']:<13}{row['samples']:>8}  {psi:>7}  {row['test']:<5}"
            f"{p_value:>10}{row['threshold']:>11.3g}  {row['status']:<16}{sustained}"
        )
    drifted = [row["feature"] for row in version["features"] if row["status"] == "drift"]
    if drifted:
        click.echo(f"  drifted: {', '.join(drifted)}")

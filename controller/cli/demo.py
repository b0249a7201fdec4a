"""``flywheel demo``: the whole loop (propose, train, review, merge, canary, approve) in minutes."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo directory (repository, state, logs) afterwards.")
@click.option(
    "--venv-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to build and cache virtualenvs (default: $FLYWHEEL_VENV_CACHE or ~/.cache/flywheel/venvs).",
)
@click.option(
    "--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait for each stage."
)
def demo(keep: bool, venv_dir: Path | None, timeout: float) -> None:
    """Run Flywheel end to end on a temporary copy of the example repository, then clean up."""
    from controller.demo import DemoError, DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_demo(DemoOptions(keep=keep, venv_dir=venv_dir, timeout_seconds=timeout, echo=click.echo))
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc

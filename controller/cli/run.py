"""``flywheel run``: the controller's main loop on the embedded home."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from controller.cli.options import state_dir_option, state_errors

if TYPE_CHECKING:
    from controller.app import Controller, ControllerSettings


def run_options(func: F) -> F:
    """The options ``flywheel run`` and ``flywheel serve`` share."""
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


F = TypeVar("F", bound=Callable[..., Any])

_RUN_OPTIONS: list[Callable[[F], F]] = [
    click.option("--repo", required=True, help="Path or URL of the git repository to watch."),
    click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between polls."),
    click.option(
        "--branch", "release_branch", default=None, help="The release branch (default: main, or master)."
    ),
    click.option(
        "--max-runs", type=click.IntRange(min=1), default=2, show_default=True, help="Pipelines at once."
    ),
    click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True),
    click.option(
        "--venv-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="FLYWHEEL_VENV_DIR",
        help="Where models' virtualenvs are kept (default: STATE_DIR/venvs); share it between repositories.",
    ),
    click.option("-v", "--verbose", is_flag=True, help="Log debug detail."),
    state_dir_option,
]


@click.command()
@run_options
@click.option(
    "--once",
    is_flag=True,
    help="Reconcile once, wait for the work started; exit 1 if a run failed or errored.",
)
def run(
    repo: str,
    interval: float,
    once: bool,
    release_branch: str | None,
    max_runs: int,
    log_format: str,
    venv_dir: Path | None,
    verbose: bool,
    state_dir: Path,
) -> None:
    """Watch a repository: train every proposal and report the result.

    Every branch other than the release branch whose models differ from their
    merge-base with it is a proposal; each new head is trained and its report
    is kept in the store (see `flywheel review show`).
    """
    from controller.app import run_controller
    from controller.logs import setup_logging
    from webhooks.events import attach_github_events

    setup_logging("json" if log_format == "json" else "text", verbose=verbose)
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
        if settings.github is not None:  # no webhook service: the poller finds GitHub's events
            attach_github_events(controller)
        code = run_controller(settings, once=once, controller=controller)
    raise SystemExit(code)


def controller_settings(**values: Any) -> ControllerSettings:
    """The controller's settings from ``values`` and the environment; a malformed one is one line."""
    from controller.app import ControllerSettings

    try:
        return ControllerSettings.from_env(**values)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def state_lock(state_dir: Path) -> Iterator[bool]:
    """Hold the state directory's controller lock while the block runs: one controller per directory.

    Yields whether the directory is new (made for this controller).
    """
    from controller.app import ControllerLock, StateDirError
    from controller.clock import SYSTEM_CLOCK

    fresh = not state_dir.exists()
    try:
        lock = ControllerLock.acquire(state_dir, clock=SYSTEM_CLOCK)
    except StateDirError as exc:
        raise click.ClickException(str(exc)) from exc
    with lock:
        yield fresh


def open_controller(settings: ControllerSettings, *, fresh: bool) -> Controller:
    """Build the controller, or say in one line why it cannot (repository, branch, state).

    A state directory made for it (``fresh``) is removed again when it cannot start.
    """
    from controller.app import build_controller
    from controller.backends.git import GitError

    try:
        with state_errors(settings.state_dir):
            return build_controller(settings)
    except (GitError, ValueError, click.ClickException) as exc:
        if fresh:
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        if isinstance(exc, click.ClickException):
            raise
        raise click.ClickException(str(exc)) from exc

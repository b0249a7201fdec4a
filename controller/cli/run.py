"""``flywheel run``: the controller's main loop on the embedded home; and what ``flywheel serve`` shares.

Both commands parse the same options (:func:`~controller.cli.options.run_options`), load one
:class:`~controller.settings.Settings` from them and the environment
(:func:`load`), and hand it to :func:`start`, the one wiring of a controller
process: ``serve`` only adds the webhook service, which runs alongside
(:func:`controller.cli.serve.webhook_service`). The controller handles its
inbox (GitHub's events, polled or delivered, Slack's button presses, queued
commands) itself; nothing here imports the webhook service.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controller.cli.options import run_options, state_errors

if TYPE_CHECKING:
    from controller.app import Controller
    from controller.settings import Settings


@click.command()
@run_options
@click.option(
    "--once",
    is_flag=True,
    help="Reconcile once, wait for the work started; exit 1 if a run failed or errored.",
)
def run(once: bool, log_format: str, verbose: bool, **options: Any) -> None:
    """Watch a repository: train every proposal and report the result.

    Every branch other than the release branch whose models differ from their
    merge-base with it is a proposal; each new head is trained and its report
    is kept in the store (see `flywheel review show`).
    """
    settings = load(options)
    raise SystemExit(start(settings, once=once, log_format=log_format, verbose=verbose))


def load(options: dict[str, Any], *, webhooks: tuple[str, int] | None = None) -> Settings:
    """The settings from ``run_options``' values and the environment; a malformed one is one line.

    ``webhooks`` (host, port) turns the webhook service on.
    """
    from controller.settings import ControllerSettings, LocalSettings, SettingsError, load_settings

    controller = ControllerSettings(
        repo=options["repo"],
        state_dir=options["state_dir"],
        interval_seconds=options["interval"],
        data_check_seconds=options["data_check_seconds"],
        max_active_runs=options["max_runs"],
        release_branch=options["release_branch"],
    )
    try:
        return load_settings(controller, local=LocalSettings(venv_dir=options["venv_dir"]), webhooks=webhooks)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


Alongside = Callable[["Settings", "Controller"], AbstractContextManager[object]]
"""What runs beside the controller while it runs (``flywheel serve``'s webhook service)."""


def start(
    settings: Settings,
    *,
    once: bool = False,
    log_format: str = "text",
    verbose: bool = False,
    alongside: Alongside | None = None,
) -> int:
    """Run a controller on ``settings`` until stopped (or one pass, with ``once``); its exit code.

    The state directory is locked for the controller's lifetime, and
    ``alongside`` (given the settings and the controller) runs while it runs,
    as does the health endpoint when ``FLYWHEEL_HEALTH_PORT`` is set.
    The controller handles its inbox; with no webhook service, GitHub's
    poller finds the events (when GitHub is configured).
    """
    from controller.app import run_controller
    from controller.cli.health import health_endpoint
    from controller.cli.leader import leader_term
    from controller.logs import setup_logging

    setup_logging("json" if log_format == "json" else "text", verbose=verbose)
    with state_lock(settings.controller.state_dir) as fresh:
        controller = open_controller(settings, fresh=fresh)
        with (
            health_endpoint(settings, controller),
            alongside(settings, controller) if alongside is not None else nullcontext(),
            leader_term(settings, clock=controller.clock) as term,  # only the leader's loop acts
        ):
            controller.leading = term.leading
            return run_controller(settings, once=once, controller=controller)


@contextmanager
def state_lock(state_dir: Path) -> Iterator[bool]:
    """Hold the state directory's controller lock while the block runs: one controller per directory.

    Yields whether the directory is new (made for this controller).
    """
    from controller.backends.local.lock import ControllerLock, StateDirError
    from controller.clock import SYSTEM_CLOCK

    fresh = not state_dir.exists()
    try:
        lock = ControllerLock.acquire(state_dir, clock=SYSTEM_CLOCK)
    except StateDirError as exc:
        raise click.ClickException(str(exc)) from exc
    with lock:
        yield fresh


def open_controller(settings: Settings, *, fresh: bool) -> Controller:
    """Build the controller, or say in one line why it cannot (repository, branch, state).

    A state directory made for it (``fresh``) is removed again when it cannot start.
    """
    from controller.app import build_controller
    from controller.backends.git import GitError

    state_dir = settings.controller.state_dir
    try:
        with state_errors(state_dir):
            return build_controller(settings)
    except (GitError, ValueError, click.ClickException) as exc:
        if fresh:
            shutil.rmtree(state_dir, ignore_errors=True)
        if isinstance(exc, click.ClickException):
            raise
        raise click.ClickException(str(exc)) from exc

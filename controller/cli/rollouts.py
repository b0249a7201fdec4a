"""``flywheel approve``, ``reject``, ``promote``, ``pause``, ``resume``, ``abort``, ``rollback``.

Each parses its arguments and calls :class:`controller.engine.commands.Commands`
with the policy of the release branch (main) of ``--repo``; the running
controller acts on what they record at its next tick.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import click

from controller.cli.options import require_state, state_dir_option
from controller.engine.commands import CommandOutcome, Commands, ControlCommand

repo_option = click.option(
    "--repo",
    default=".",
    show_default=True,
    envvar="FLYWHEEL_REPO",
    help="The GitOps repository whose main-branch policy decides (path or URL).",
)
branch_option = click.option("--branch", default=None, help="The release branch (default: the repository's).")
as_option = click.option(
    "--as",
    "user",
    default=None,
    help="Who you are in the policy (default: $FLYWHEEL_USER, else your login name).",
)
reason_option = click.option("--reason", "-m", default="", help="Why; kept in the audit log.")


def _with_commands(
    repo: str, branch: str | None, state_dir: Path, act: Callable[[Commands], CommandOutcome]
) -> None:
    from controller.backends.git import GitError, Repository
    from controller.backends.store import open_store

    require_state(state_dir)  # a decision needs a rollout, so a state, to act on
    try:
        repository = Repository.open(repo, mirror_root=state_dir / "mirrors")
        release = branch or repository.default_branch
        repository.resolve(release)
    except GitError as exc:
        raise click.ClickException(str(exc)) from exc
    store = open_store(state_dir)
    try:
        commands = Commands(store=store, catalog=lambda: repository.catalog(repository.resolve(release)))
        outcome = act(commands)
    finally:
        store.close()
    if not outcome.ok:
        raise click.ClickException(f"refused: {outcome.message}")
    click.echo(outcome.message)


def _user(user: str | None) -> str:
    return user or os.environ.get("FLYWHEEL_USER") or getpass.getuser()


def _decision(decision: Literal["approve", "reject"]) -> click.Command:
    @click.command(name=decision)
    @click.argument("model")
    @click.argument("version", required=False, type=int)
    @click.option("--env", "environment", default=None, help="The environment (default: the next gate).")
    @as_option
    @reason_option
    @repo_option
    @branch_option
    @state_dir_option
    def command(
        model: str,
        version: int | None,
        environment: str | None,
        user: str | None,
        reason: str,
        repo: str,
        branch: str | None,
        state_dir: Path,
    ) -> None:
        from controller.engine.commands import Actor

        actor = Actor("cli", _user(user))
        _with_commands(
            repo,
            branch,
            state_dir,
            lambda c: c.decide(
                actor,
                decision=decision,
                model=model,
                version=version,
                environment=environment,
                comment=reason,
            ),
        )

    verb = "Approve" if decision == "approve" else "Reject"
    command.help = (
        f"{verb} MODEL VERSION for --env (default: the active rollout and its next approval gate), "
        "as --as USER, checked against main's policy and written to the audit log."
    )
    return command


def _control(name: ControlCommand, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("model")
    @as_option
    @reason_option
    @repo_option
    @branch_option
    @state_dir_option
    def command(
        model: str, user: str | None, reason: str, repo: str, branch: str | None, state_dir: Path
    ) -> None:
        from controller.engine.commands import Actor

        actor = Actor("cli", _user(user))
        _with_commands(
            repo, branch, state_dir, lambda c: c.control(actor, command=name, model=model, reason=reason)
        )

    return command


approve = _decision("approve")
reject = _decision("reject")
promote = _control(
    "promote", "Skip the rest of the current canary step of MODEL's rollout (gates still apply)."
)
pause = _control("pause", "Hold MODEL's rollout where it is (traffic stays as it is) until resumed.")
resume = _control("resume", "Let MODEL's paused rollout go on.")
abort = _control("abort", "Stop MODEL's rollout: the stable version takes all traffic again.")
rollback = _control(
    "rollback", "Roll MODEL back: stop its rollout, or serve the previous version again when none is active."
)

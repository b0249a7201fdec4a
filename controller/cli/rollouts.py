"""``flywheel approve``, ``reject``, ``promote``, ``pause``, ``resume``, ``abort``, ``rollback``.

Each parses its arguments and calls :class:`controller.engine.commands.Commands`
with the policy of the release branch (main) of ``--repo``; the running
controller acts on what they record at its next tick. Who asks is the
operating-system user running the command (:func:`os_login`), as main's
policy maps them (:func:`~controller.engine.approvals.login_user`); ``--as``
(or ``FLYWHEEL_USER``) must name that same person, or the request is refused.

With ``--server URL`` (``FLYWHEEL_SERVER``) the request goes instead to a
shared Flywheel's dashboard API with the bearer token in ``FLYWHEEL_TOKEN``
(``flywheel ui token create``); there the token's person asks, and an
``--as`` naming anyone else is refused by the server.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NoReturn, TypedDict, TypeVar, Unpack

import click

from controller.cli.options import existing_store, server_option, state_dir_option
from controller.engine.approvals import login_user
from controller.engine.commands import Actor, CommandOutcome, Commands, ControlCommand
from controller.specs.types import Catalog

F = TypeVar("F", bound=Callable[..., object])

repo_option = click.option(
    "--repo",
    default=None,
    envvar="FLYWHEEL_REPO",
    help="The GitOps repository (path or URL); it must be the one the controller watches (the default).",
)
branch_option = click.option(
    "--branch", default=None, help="The release branch; it must be the controller's (the default)."
)
as_option = click.option(
    "--as",
    "user",
    default=None,
    help="Who you are in the policy; it must be who your operating-system user is there "
    "(default: $FLYWHEEL_USER, else that person).",
)
reason_option = click.option("--reason", "-m", default="", help="Why; kept in the audit log.")


def _request_options(func: F) -> F:
    """Who asks, why, and under which controller's policy: --as, --reason, --repo, --branch, --state-dir."""
    for option in (state_dir_option, server_option, branch_option, repo_option, reason_option, as_option):
        func = option(func)
    return func


class _Requester(TypedDict):
    """What :func:`_request_options` parse: who asks (``--as``), and the controller whose policy judges it."""

    user: str | None
    server: str | None
    repo: str | None
    branch: str | None
    state_dir: Path


def _with_commands(
    act: Callable[[Commands, Actor], CommandOutcome],
    *,
    command: str,
    model: str,
    fields: dict[str, str],
    **who: Unpack[_Requester],
) -> None:
    """Run ``act`` as the user asking under the policy of the release branch of the watched repository.

    A ``--repo`` or ``--branch`` naming anything else is refused (and audited):
    a decision judged under another branch's policy is one the gate would
    never count, and the audit log must not say otherwise.
    """
    from controller.backends.git import GitError, Repository
    from controller.clock import SYSTEM_CLOCK
    from controller.engine.commands import main_policy, repository_location, watched

    user, repo, branch, state_dir = who["user"], who["repo"], who["branch"], who["state_dir"]
    login = os_login()
    claimed = user or os.environ.get("FLYWHEEL_USER") or None
    if who["server"]:
        asked = {"command": command, **fields}
        click.echo(_remote(who["server"], model=model, fields=asked, claimed=claimed))
        return
    actor = Actor("cli", claimed or login)
    # a decision needs a rollout, so a state, to act on
    with existing_store(state_dir, writes=True) as store:
        known = watched(store)
        if known is not None:
            why = None
            if repo is not None and repository_location(repo) != known.repository:
                refusal = "not_watched"
                why = f"{repo} is not the repository the controller watches ({known.repository})."
            elif branch is not None and branch != known.release_branch:
                refusal = "not_release_branch"
                why = f"requests are judged under the policy of {known.release_branch}, never {branch}'s."
            if why is not None:
                unread = Commands(store=store, catalog=_no_catalog, clock=SYSTEM_CLOCK)
                _refused(unread.refuse(actor, command=command, model=model, refusal=refusal, why=why))
        try:
            repository = Repository.open(
                known.repository if known else repo or ".", mirror_root=state_dir / "mirrors"
            )
            release = known.release_branch if known else branch or repository.default_branch
            repository.resolve(release)
        except GitError as exc:
            raise click.ClickException(str(exc)) from exc
        commands = Commands(
            store=store, catalog=lambda: repository.catalog(repository.resolve(release)), clock=SYSTEM_CLOCK
        )
        policy = main_policy(commands.catalog())
        if policy is not None:
            me = login_user(policy, login)
            if claimed is not None and claimed != me:
                why = _not_you(claimed, login, me)
                _refused(commands.refuse(actor, command=command, model=model, refusal="not_you", why=why))
            actor = Actor("cli", me or login)
        outcome = act(commands, actor)
    if not outcome.ok:
        _refused(outcome)
    click.echo(outcome.message)


def _remote(server: str, *, model: str, fields: dict[str, str], claimed: str | None) -> str:
    """Ask the dashboard API at ``server`` with ``FLYWHEEL_TOKEN``; its answer, or one line why not."""
    from urllib.parse import quote

    from controller.cli.client import Server

    dashboard = Server.from_environment(server)
    body = {**{k: v for k, v in fields.items() if v}, **({"as": claimed} if claimed else {})}
    status, data = dashboard.act(f"models/{quote(model, safe='')}/actions", body)
    if status == 200 and data.get("ok"):
        return str(data.get("message", ""))
    if status == 403 and "message" in data:
        raise click.ClickException(f"refused: {data['message']}")
    why = data.get("error") or data.get("message") or f"HTTP {status}"
    raise click.ClickException(f"{dashboard.url} answered {status}: {why}")


def os_login() -> str:
    """The name of the operating-system user running this process (its real user id's, not $USER's)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a user id with no name (a container's arbitrary uid): nobody the policy can map
        return str(os.getuid())


def _not_you(claimed: str, login: str, me: str | None) -> str:
    if me is None:
        return (
            f"--as {claimed} is not you: your operating-system user {login} is nobody in main's policy "
            f"(add `login: {login}` to your identity there)."
        )
    return f"--as {claimed} is not you: your operating-system user {login} is {me} in main's policy."


def _refused(outcome: CommandOutcome) -> NoReturn:
    raise click.ClickException(f"refused: {outcome.message}")


def _no_catalog() -> Catalog:
    raise RuntimeError("a refusal made before reading the repository needs no catalog")


def _decision(decision: Literal["approve", "reject"]) -> click.Command:
    @click.command(name=decision)
    @click.argument("model")
    @click.argument("version", required=False, type=int)
    @click.option("--env", "environment", default=None, help="The environment (default: the next gate).")
    @_request_options
    def command(
        model: str, version: int | None, environment: str | None, reason: str, **who: Unpack[_Requester]
    ) -> None:
        def act(commands: Commands, actor: Actor) -> CommandOutcome:
            return commands.decide(
                actor,
                decision=decision,
                model=model,
                version=version,
                environment=environment,
                comment=reason,
            )

        fields = {"version": "" if version is None else str(version), "environment": environment or ""}
        _with_commands(act, command=decision, model=model, fields={**fields, "reason": reason}, **who)

    verb = "Approve" if decision == "approve" else "Reject"
    command.help = (
        f"{verb} MODEL VERSION for --env (default: the active rollout and its next approval gate), "
        "as --as USER, checked against main's policy and written to the audit log."
    )
    return command


def _control(name: ControlCommand, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("model")
    @_request_options
    def command(model: str, reason: str, **who: Unpack[_Requester]) -> None:
        def act(commands: Commands, actor: Actor) -> CommandOutcome:
            return commands.control(actor, command=name, model=model, reason=reason)

        _with_commands(act, command=name, model=model, fields={"reason": reason}, **who)

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

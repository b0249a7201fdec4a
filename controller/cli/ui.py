"""``flywheel ui [--host H] [--port P]``: the web dashboard over the state ``flywheel run`` keeps.

Opens the store in ``--state-dir`` (which must exist: the controller made
it), reads main's specs from the repository the controller watches (else
``--repo``) when it can (canary steps, analysis bounds, who may approve;
again on each request, so a change on main shows), and serves
:func:`controller.ui.create_app` with uvicorn until interrupted. It takes no
lock, so it runs beside ``flywheel run``; it writes only what people ask for
(decisions, requests and their audit entries), through the engine's commands.
It prints a one-time sign-in address that signs in as the operating-system
user who started it (mapped by the policy's ``identities``); the settings of
:class:`~controller.settings.UiSettings` say who may read and which proxies to believe.
:func:`dashboard` builds the same app for ``flywheel serve``, which mounts it
at ``/ui``.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controller.cli.options import existing_store, given, repo_option, state_dir_option

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from controller.backends.store.sql import SqlStore
    from controller.clock import Clock
    from controller.specs.types import Catalog
    from controller.ui.access import Access, SignIn
    from controller.ui.facts import DriftSource


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the dashboard listens on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8090, show_default=True)
@click.option(
    "--github-repository",
    default=None,
    envvar="FLYWHEEL_GITHUB_REPOSITORY",
    help="owner/name on GitHub, to link commits and pull requests (default: none).",
)
@repo_option("The GitOps repository whose main branch gives canary steps, bounds and who may approve.")
@click.option("--branch", default=None, help="The release branch (default: the repository's).")
@state_dir_option
@click.pass_context
def ui(
    ctx: click.Context,
    host: str,
    port: int,
    github_repository: str | None,
    repo: str,
    branch: str | None,
    state_dir: Path,
) -> None:
    """Serve the web dashboard (models, versions, rollouts, approvals, audit) on http://HOST:PORT/.

    `flywheel ui token create NAME --as PERSON` issues a token for the API (the CLI's --server).
    """
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from controller.clock import SYSTEM_CLOCK
    from controller.engine.commands import watched
    from controller.ui.access import SignIn

    required = given(ctx, "repo")
    with existing_store(state_dir) as store:
        known = watched(store)  # people's requests are judged under the watched repository's main only
        if known is not None:
            repo, branch = known.repository, known.release_branch
        catalog = main_specs(repo, branch, state_dir, required=required)
        sign_in = SignIn(getpass.getuser())
        app = dashboard(
            store,
            clock=SYSTEM_CLOCK,
            catalog=catalog,
            github_repository=github_repository,
            state_dir=state_dir,
            access=access_for(host, sign_in=sign_in, store=store),
        )
        click.echo(f"dashboard on http://{host}:{port}/ reading {state_dir}")
        click.echo(f"sign in as {sign_in.user} (once) at http://{host}:{port}/signin?token={sign_in.token}")
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False)
        uvicorn.Server(config).run()


def main_specs(
    repo: str, branch: str | None, state_dir: Path, *, required: bool
) -> Callable[[], Catalog | None]:
    """Main's specs in ``repo`` as they are at each call (cached by commit), or always ``None``.

    Read once here: a repository that cannot be read is an error when
    ``required`` (``--repo`` given), else the pages go without main's specs.
    Later a read that fails keeps the last catalog read. Calls may come from
    several threads; one at a time reads the repository.
    """
    from controller.backends.git import GitError, Repository

    try:
        repository = Repository.open(repo, mirror_root=state_dir / "mirrors")
        ref = branch or repository.default_branch
        last = [repository.catalog(repository.resolve(ref))]
    except GitError as exc:
        if required:
            raise click.ClickException(str(exc)) from exc
        return lambda: None
    lock = threading.Lock()

    def read() -> Catalog | None:
        with lock, contextlib.suppress(GitError):  # unread just now: the pages show the last specs read
            last[0] = repository.catalog(repository.resolve(ref))
        return last[0]

    return read


def dashboard(
    store: SqlStore,
    *,
    clock: Clock,
    catalog: Callable[[], Catalog | None],
    github_repository: str | None,
    state_dir: Path | None = None,
    access: Access | None = None,
) -> Starlette:
    """The dashboard's app over ``store``, with main's specs as ``catalog`` reads them.

    With ``state_dir`` (the embedded home), drift is asked of the routers it
    runs, and the session key is kept there unless ``FLYWHEEL_UI_SECRET`` gives it.
    People act as ``access`` knows them (default: :func:`access_for` a loopback address,
    without a local sign-in; ``flywheel ui`` and ``flywheel serve`` give theirs), on a store that
    passes the controller's state check at each request (as ``flywheel approve`` does).
    """
    from controller.backends.store.integrity import verify_state
    from controller.settings import SettingsError, ui_settings
    from controller.ui import LinkMaker, create_app
    from controller.ui.access import session_secret

    try:
        secret = session_secret(ui_settings().secret, state_dir)
    except (SettingsError, OSError) as exc:
        raise click.ClickException(f"dashboard: {exc}") from exc

    def thread(model: str, version: int) -> str | None:
        message = store.slack_message(model=model, version=version)
        if message is None:
            return None
        return f"https://slack.com/archives/{message.channel}/p{message.ts.replace('.', '')}"

    return create_app(
        models=store,
        history=store,
        clock=clock,
        catalog=catalog,
        links=LinkMaker(github_repository=github_repository or None),
        pull_number=store.pull_number_for_branch,
        slack_thread=thread,
        drift=local_drift(state_dir) if state_dir is not None else None,
        records=store,
        access=access or access_for("127.0.0.1", sign_in=None, store=store),
        secret=secret,
        verify=lambda: verify_state(store),
    )


def access_for(host: str, *, sign_in: SignIn | None, store: SqlStore) -> Access:
    """Who may read and act, from the settings: reading is open by default only on a loopback ``host``.

    Bearer tokens are the ones issued into ``store`` (``flywheel ui token create``).
    """
    import functools

    from controller.settings import SettingsError, ui_settings
    from controller.ui.access import Access, networks
    from controller.ui.tokens import token_user

    try:
        settings = ui_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return Access(
        read=settings.read or ("open" if loopback else "signed-in"),
        trusted_proxies=networks(settings.trusted_proxies),
        user_header=settings.user_header,
        sign_in=sign_in,
        tokens=functools.partial(token_user, store),
    )


@ui.group()
def token() -> None:
    """API tokens for the CLI's --server: each acts as one person, checked by main's policy per request."""


@token.command("create")
@click.argument("name")
@click.option("--as", "person", required=True, help="Who the token acts as (a name main's policy maps).")
@state_dir_option
def token_create(name: str, person: str, state_dir: Path) -> None:
    """Issue a token named NAME acting as PERSON; it is printed once and kept only as a hash."""
    from controller.cli.rollouts import os_login
    from controller.ui.tokens import TokenTaken, issue_token

    with existing_store(state_dir, writes=True) as store:
        try:
            secret = issue_token(store, name=name, user=person, by=os_login())
        except TokenTaken as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"token {name} acts as {person}; it is shown this once:")
    click.echo(secret)


@token.command("revoke")
@click.argument("name")
@state_dir_option
def token_revoke(name: str, state_dir: Path) -> None:
    """Revoke the token named NAME: requests bearing it are refused from now on."""
    from controller.cli.rollouts import os_login
    from controller.ui.tokens import revoke_token

    with existing_store(state_dir, writes=True) as store:
        if not revoke_token(store, name=name, by=os_login()):
            raise click.ClickException(f"there is no token named {name!r}")
    click.echo(f"token {name} revoked")


def local_drift(state_dir: Path) -> DriftSource:
    """A model's drift tables from the routers of the embedded home (``flywheel drift --json``'s reads)."""

    def read(model: str) -> list[dict[str, Any]]:
        from controller.backends.serving import ServingError
        from controller.backends.serving.drift_watch import fetch_drift
        from controller.backends.serving.local import LocalServing
        from controller.clock import SYSTEM_CLOCK

        try:
            statuses = LocalServing(state_dir / "serving", clock=SYSTEM_CLOCK).status(None)
        except ServingError as exc:
            return [{"environment": "-", "error": str(exc)}]
        tables: list[dict[str, Any]] = []
        for status in statuses:
            if model not in status.routes:
                continue
            if not status.running or status.endpoint is None:
                tables.append({"environment": status.environment, "error": "its router is not running"})
                continue
            try:
                tables.append(fetch_drift(status.endpoint, model))
            except ServingError as exc:
                tables.append({"environment": status.environment, "error": str(exc)})
        return tables

    return read

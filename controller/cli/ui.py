"""``flywheel ui [--host H] [--port P]``: the web dashboard over the state ``flywheel run`` keeps.

Opens the store in ``--state-dir`` (which must exist: the controller made
it), reads main's specs from ``--repo`` once at start when it can (canary
steps, analysis bounds, who may approve), and serves
:func:`controller.ui.create_app` with uvicorn until interrupted. It takes no
lock and writes nothing, so it runs beside ``flywheel run``.
:func:`dashboard` builds the same app for ``flywheel serve``, which mounts it
at ``/ui``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import existing_store, given, main_catalog, repo_option, state_dir_option

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from controller.clock import Clock
    from controller.specs.types import Catalog
    from controller.ui import DashboardStore


@click.command()
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
def ui(
    host: str, port: int, github_repository: str | None, repo: str, branch: str | None, state_dir: Path
) -> None:
    """Serve the web dashboard (models, versions, rollouts, approvals, audit) on http://HOST:PORT/."""
    import uvicorn

    from controller.clock import SYSTEM_CLOCK

    required = given(click.get_current_context(), "repo")
    catalog = main_catalog(repo, branch, state_dir, required=required)
    with existing_store(state_dir) as store:
        app = dashboard(store, clock=SYSTEM_CLOCK, catalog=catalog, github_repository=github_repository)
        click.echo(f"dashboard on http://{host}:{port}/ reading {state_dir}")
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False)
        uvicorn.Server(config).run()


def dashboard(
    store: DashboardStore, *, clock: Clock, catalog: Catalog | None, github_repository: str | None
) -> Starlette:
    """The dashboard's app over ``store``, with main's ``catalog`` as read at start."""
    from controller.ui import LinkMaker, create_app

    return create_app(
        store=store,
        clock=clock,
        catalog=lambda: catalog,
        links=LinkMaker(github_repository=github_repository or None),
    )

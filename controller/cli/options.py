"""Options and helpers shared by several commands.

The state directory and the store in it, ``--server`` (a shared Flywheel to ask
instead, through :class:`controller.cli.client.Server`), the options of ``run``
and ``serve``, ``--json`` and the tables or JSON the read-only commands print,
main's specs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from controller.backends.store.sql import SqlStore
    from controller.specs.types import Catalog

F = TypeVar("F", bound=Callable[..., object])
T = TypeVar("T")


def state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(".flywheel"),
        show_default=True,
        envvar="FLYWHEEL_STATE_DIR",
        help="Where Flywheel keeps its state (SQLite database, runs, virtualenvs).",
    )(func)


server_option = click.option(
    "--server",
    metavar="URL",
    default=None,
    envvar="FLYWHEEL_SERVER",
    help="A shared Flywheel's dashboard (e.g. https://flywheel.example.com/ui) to ask instead of the "
    "local state, with the token in $FLYWHEEL_TOKEN (optional for reading where reading is open).",
)


def run_options(func: F) -> F:
    """The options ``flywheel run`` and ``flywheel serve`` share."""
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


_RUN_OPTIONS: list[Callable[[F], F]] = [
    click.option("--repo", required=True, help="Path or URL of the git repository to watch."),
    click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between polls."),
    click.option(
        "--data-check-interval",
        "data_check_seconds",
        type=click.FloatRange(min=1),
        default=300.0,
        show_default=True,
        envvar="FLYWHEEL_DATA_CHECK_SECONDS",
        help="Seconds between reads of the data inputs' versions, for triggers.dataChange.",
    ),
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


def repo_option(help_text: str) -> Callable[[F], F]:
    return click.option("--repo", default=".", show_default=True, envvar="FLYWHEEL_REPO", help=help_text)


branch_option = click.option("--branch", default=None, help="The release branch (default: the repository's).")


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def view_options(repo_help: str) -> Callable[[F], F]:
    """The options of a command that reads the store and, when it can, main's specs: --repo to --state-dir."""

    def apply(func: F) -> F:
        for option in (state_dir_option, json_option, branch_option, repo_option(repo_help)):
            func = option(func)
        return func

    return apply


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def echo_rows(
    rows: Sequence[T],
    *,
    as_json: bool,
    to_json: Callable[[T], object],
    empty: str,
    header: str,
    lines: Callable[[T], Iterable[str]],
) -> None:
    """``rows`` as a JSON list (``to_json`` each), or a table: ``header``, then each row's ``lines``."""
    if as_json:
        echo_json([to_json(row) for row in rows])
        return
    if not rows:
        click.echo(empty)
        return
    click.echo(header)
    for row in rows:
        for line in lines(row):
            click.echo(line)


def shown(state_dir: Path) -> str:
    """The state directory as a person typed it: ``./.flywheel`` for the default."""
    text = str(state_dir)
    return text if state_dir.is_absolute() or text.startswith(("./", "../")) else f"./{text}"


def database_url() -> str | None:
    """``FLYWHEEL_DATABASE_URL`` (the state in PostgreSQL), or ``None``; a malformed one is one line."""
    from controller.settings import SettingsError
    from controller.settings import database_url as configured

    try:
        return configured()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def require_state(state_dir: Path) -> None:
    """Refuse in one line (exit 1) when ``state_dir`` holds no Flywheel state; create nothing.

    With ``FLYWHEEL_DATABASE_URL`` the state is in that database, whatever the directory holds.
    """
    from controller.backends.store import STATE_DB_NAME

    if database_url() is not None:
        return
    try:
        found = (state_dir / STATE_DB_NAME).is_file()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise click.ClickException(f"cannot read the Flywheel state in {shown(state_dir)}: {why}") from exc
    if not found:
        raise click.ClickException(
            f"no Flywheel state in {shown(state_dir)}; run `flywheel run` first or pass --state-dir"
        )


@contextmanager
def state_errors(state_dir: Path) -> Iterator[None]:
    """Turn a state directory or database that cannot be opened into one line for people."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from controller.backends.store import StoreError

    try:
        yield
    except (StoreError, SQLAlchemyError, OSError) as exc:
        if isinstance(exc, DBAPIError):
            why = str(exc.orig).strip().splitlines()[0]
        elif isinstance(exc, OSError):
            why = exc.strerror or str(exc)
        else:
            why = str(exc)
        where = "the database of FLYWHEEL_DATABASE_URL" if database_url() else shown(state_dir)
        raise click.ClickException(f"cannot use the Flywheel state in {where}: {why}") from exc


@contextmanager
def existing_store(state_dir: Path, *, writes: bool = False) -> Iterator[SqlStore]:
    """The store in ``state_dir``, which must exist already (read-only commands and decisions).

    A command that ``writes`` is refused in one line on a store the controller would refuse
    (:func:`~controller.backends.store.integrity.verify_state`).
    """
    from controller.backends.store import open_store
    from controller.backends.store.integrity import verify_state
    from controller.clock import SYSTEM_CLOCK

    require_state(state_dir)
    with state_errors(state_dir):
        store = open_store(database_url() or state_dir, clock=SYSTEM_CLOCK)
        if writes:
            try:
                verify_state(store)
            except BaseException:
                store.close()
                raise
    try:
        yield store
    finally:
        store.close()


@contextmanager
def store_and_catalog(
    repo: str, branch: str | None, state_dir: Path
) -> Iterator[tuple[SqlStore, Catalog | None]]:
    """The store in ``state_dir`` and main's specs in ``repo`` (see :func:`main_catalog`).

    Main's specs are ``None`` when they cannot be read, unless ``--repo`` was given: then that is an error.
    """
    with existing_store(state_dir) as store:
        required = given(click.get_current_context(), "repo")
        yield store, main_catalog(repo, branch, state_dir, required=required)


def main_catalog(repo: str, branch: str | None, state_dir: Path, *, required: bool) -> Catalog | None:
    """Main's specs in ``repo``; ``None`` when they cannot be read and ``required`` is false."""
    from controller.backends.git import GitError, Repository

    try:
        repository = Repository.open(repo, mirror_root=state_dir / "mirrors")
        return repository.catalog(repository.resolve(branch or repository.default_branch))
    except GitError as exc:
        if required:
            raise click.ClickException(str(exc)) from exc
        return None


def given(ctx: click.Context, name: str) -> bool:
    """Whether the parameter ``name`` was given (on the command line or in its variable), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
    )


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30s``, ``10m``, ``1h30m`` or ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total, number = 0.0, ""
    for char in text.strip():
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise click.BadParameter(f"{text!r} is not a duration like 30s, 10m, 1h30m or 7d")
    if number or total <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 10m, 1h30m or 7d")
    return total

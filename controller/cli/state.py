"""``flywheel state check`` and ``flywheel state accept``: an operator's look at the state, and consent.

The controller refuses to act on a state directory that cannot be written,
is damaged, or whose audit log is behind its high-water mark
(:func:`controller.backends.store.integrity.verify_state`). ``check`` shows
why: the mark against the database's log, and the newest entries the
database still has. ``accept --yes`` takes the database as it is: the
acceptance is audited (who, why, what was missing) and the mark is written
again, so the controller starts on it.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import (
    echo_json,
    existing_store,
    json_option,
    require_state,
    shown,
    state_dir_option,
    state_errors,
)

if TYPE_CHECKING:
    from controller.backends.store import AuditEntry
    from controller.backends.store.integrity import AuditComparison, AuditMark
    from controller.backends.store.sql import SqlStore

_SHOWN_ENTRIES = 5


@click.group()
def state() -> None:
    """Check the state directory, or accept a damaged one as it is."""


@state.command()
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=_SHOWN_ENTRIES,
    show_default=True,
    help="How many of the newest entries the database has to show.",
)
@json_option
@state_dir_option
def check(last: int, as_json: bool, state_dir: Path) -> None:
    """Whether the controller would act on STATE_DIR, and what its audit log lacks; exit 1 if it would not."""
    from controller.backends.store.integrity import StateRefused

    with existing_store(state_dir) as store:
        problems: list[str] = []
        for probe in (store.check_writable, store.check_intact):
            try:
                probe()
            except StateRefused as exc:
                problems.append(str(exc))
        with state_errors(state_dir):
            comparison = store.audit_comparison()
        entries = store.audit(limit=last) if last else []
    if as_json:
        echo_json(
            {
                "state_dir": str(state_dir),
                "problems": problems,
                "audit": comparison.state,
                "missing": comparison.missing,
                "mark": _mark_json(comparison.mark),
                "database": _mark_json(comparison.database),
                "database_up_to_mark": _mark_json(comparison.at_mark),
                "last_entries": [
                    {"sequence": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action}
                    for e in entries
                ],
            }
        )
    else:
        _print_check(state_dir, store, comparison, problems, entries)
    if problems or comparison.damaged:
        raise SystemExit(1)


def _print_check(
    state_dir: Path,
    store: SqlStore,
    comparison: AuditComparison,
    problems: list[str],
    entries: list[AuditEntry],
) -> None:
    for line in problems:
        click.echo(f"refused:   {line}")
    if not problems:
        click.echo(f"state:     {shown(state_dir)} is writable and its database intact")
    mark = comparison.mark
    where = store.audit_mark_path or "kept by no file"
    click.echo(f"mark:      {mark.describe() if mark else 'none yet'}  ({where})")
    click.echo(f"database:  {comparison.database.describe()}")
    if mark is not None and comparison.at_mark != comparison.database:
        click.echo(f"           up to the mark's #{mark.sequence}: {comparison.at_mark.describe()}")
    verdict = {
        "in step": "the audit log is in step with its mark",
        "ahead": "the audit log has entries its mark has not seen yet (the mark is brought up at start)",
        "unmarked": "no mark yet (one is written at start)",
        "behind": f"{comparison.missing} audit entries are missing from the database",
        "diverged": "the audit log up to the mark is not the one the mark recorded",
    }[comparison.state]
    click.echo(f"audit:     {verdict}")
    if comparison.damaged:
        click.echo(
            "           the controller refuses to act until you accept the database as it is: "
            f"`flywheel state accept --state-dir {shown(state_dir)} --yes --reason ...`"
        )
    if entries:
        click.echo("newest entries the database has:")
        for entry in entries:
            about = entry.subject
            when = entry.at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"  #{entry.id:<6} {when}  {entry.actor:<14} {entry.action:<22} {about}".rstrip())


def _mark_json(mark: AuditMark | None) -> dict[str, object] | None:
    if mark is None:
        return None
    return {"sequence": mark.sequence, "entries": mark.entries, "digest": mark.digest}


@state.command()
@click.option("--yes", is_flag=True, help="Yes: accept the database as it is, giving up what it lost.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--as", "user", default=None, help="Who accepts (default: $FLYWHEEL_USER, else your login).")
@state_dir_option
def accept(yes: bool, reason: str, user: str | None, state_dir: Path) -> None:
    """Accept the database in STATE_DIR as it is: audit that, and write the audit log's mark again."""
    from controller.cli.run import state_lock

    if not yes:
        raise click.ClickException(
            "accepting gives up whatever the audit log lost and lets the controller act on the database "
            "as it is; see `flywheel state check` first, then run this again with --yes"
        )
    actor = f"cli:{user or os.environ.get('FLYWHEEL_USER') or getpass.getuser()}"
    require_state(state_dir)  # nothing to accept where there is no state; create none
    with state_lock(state_dir), existing_store(state_dir) as store, state_errors(state_dir):
        store.check_writable()
        store.check_intact()
        before = store.accept_state(actor=actor, reason=reason)
        after = store.audit_comparison()
    gave_up = f"; {before.missing} missing entries given up" if before.missing else ""
    now = after.database.describe()
    click.echo(f"accepted the state in {shown(state_dir)} as it is{gave_up}; audit mark now {now}")

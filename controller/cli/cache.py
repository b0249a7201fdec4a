"""``flywheel cache ls|prune``: results kept by cache key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.options import (
    echo_rows,
    existing_store,
    json_option,
    parse_duration,
    state_dir_option,
    state_errors,
)

if TYPE_CHECKING:
    from controller.engine.cache import CacheEntry


@click.group()
def cache() -> None:
    """Run results kept by cache key (a key with a result is never trained again)."""


@cache.command("ls")
@json_option
@state_dir_option
def list_entries(as_json: bool, state_dir: Path) -> None:
    """List the cached results: key, model, run, age, size on disk."""
    from controller.engine.cache import cache_entries

    with existing_store(state_dir) as store, state_errors(state_dir):
        entries = cache_entries(store, state_dir)
    echo_rows(
        entries,
        as_json=as_json,
        to_json=_entry_json,
        empty="cache is empty",
        header=f"{'KEY':<18}{'MODEL':<20}{'RUN':>6}  {'FINISHED':<20}{'SIZE':>10}",
        lines=_entry_line,
    )


def _entry_json(entry: CacheEntry) -> dict[str, object]:
    return {
        "cache_key": entry.cache_key,
        "model": entry.model,
        "run": entry.run_id,
        "finished_at": entry.finished_at.isoformat() if entry.finished_at else None,
        "path": str(entry.path),
        "bytes": entry.bytes,
    }


def _entry_line(entry: CacheEntry) -> list[str]:
    finished = entry.finished_at.strftime("%Y-%m-%d %H:%M:%S") if entry.finished_at else "-"
    size = _size(entry.bytes)
    return [f"{entry.cache_key[:16]:<18}{entry.model:<20}{entry.run_id:>6}  {finished:<20}{size:>10}"]


@cache.command()
@click.option("--older-than", "older_than", required=True, help="Age like 7d, 12h or 30m.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, remove nothing.")
@state_dir_option
def prune(older_than: str, dry_run: bool, state_dir: Path) -> None:
    """Remove cached results (and unused virtualenvs) older than a duration.

    The runs stay in the history; their results can no longer be reused, so
    the same inputs train again. Results that a model version was made from
    are kept, whatever their age.
    """
    from controller.clock import SYSTEM_CLOCK
    from controller.engine.cache import prune_cache

    seconds = parse_duration(older_than)
    with existing_store(state_dir, writes=not dry_run) as store, state_errors(state_dir):
        removed = prune_cache(
            store, state_dir, older_than_seconds=seconds, clock=SYSTEM_CLOCK, dry_run=dry_run
        )
    verb = "would remove" if dry_run else "removed"
    total = sum(item.bytes for item in removed)
    click.echo(f"{verb} {len(removed)} entries, {_size(total)}")
    for item in removed:
        click.echo(f"  {item.kind} {item.name} ({_size(item.bytes)})")


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

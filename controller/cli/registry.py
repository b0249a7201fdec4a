"""``flywheel versions``, ``history`` and ``audit``: what the registry and the audit log hold.

Each builds its ``--json`` document (:mod:`controller.engine.documents`) from
the local state, or with ``--server`` reads the same document from a shared
Flywheel's dashboard API (:class:`controller.cli.client.Server`), and renders
it: the text is the same either way. ``flywheel models`` (every model's
state) is in :mod:`controller.cli.status`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from controller.cli.options import echo_json, existing_store, json_option, server_option, state_dir_option


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _shown(text: str) -> str:
    """An ISO 8601 time of a document as the tables show it."""
    return _when(datetime.fromisoformat(text))


def _remote(server: str, path: str, params: Mapping[str, str | int | None] | None = None) -> Any:
    from controller.cli.client import Server

    return Server.from_environment(server).read(path, params)


def _path(model: str, what: str) -> str:
    return f"models/{quote(model, safe='')}/{what}"


@click.command()
@click.argument("model")
@json_option
@state_dir_option
@server_option
def versions(model: str, as_json: bool, state_dir: Path, server: str | None) -> None:
    """The versions of MODEL with their lineage (run, commit, metrics, artifact digest)."""
    from controller.engine.documents import Missing, versions_document

    if server:
        rows = _remote(server, _path(model, "versions"))
    else:
        with existing_store(state_dir) as store:
            try:
                rows = versions_document(store, model)
            except Missing as exc:
                raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'VERSION':<8} {'CREATED (UTC)':<20} {'COMMIT':<11} {'RUN':<6} {'ARTIFACT':<20} METRICS")
    for row in rows:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(row["metrics"].items()))
        click.echo(
            f"v{row['version']:<7} {_shown(row['created_at']):<20} {row['commit'][:10]:<11} {row['run']:<6} "
            f"{row['artifact_digest'][:19]:<20} {metrics}"
        )


@click.command()
@click.argument("model")
@click.option("--env", "environment", default=None, help="Only this environment.")
@click.option(
    "--at", "at", default=None, help="Which versions served at this time (ISO 8601, UTC if no zone)."
)
@json_option
@state_dir_option
@server_option
def history(
    model: str, environment: str | None, at: str | None, as_json: bool, state_dir: Path, server: str | None
) -> None:
    """What served MODEL in each environment: every traffic change, or the split at one time (--at)."""
    from controller.engine.documents import Missing, history_document

    when = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError as exc:
            raise click.BadParameter(f"{at!r} is not an ISO 8601 time", param_hint="--at") from exc
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    if server:
        query = {"environment": environment, "at": when.isoformat() if when else None}
        found = _remote(server, _path(model, "history"), query)
    else:
        with existing_store(state_dir) as store:
            try:
                found = history_document(store, store, model, environment=environment, at=when)
            except Missing as exc:
                raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(found)
        return
    environments: dict[str, list[dict[str, Any]]] = found["environments"]
    if found["at"] is not None:
        for env, split in environments.items():
            served = ", ".join(f"v{s['version']} ({s['weight']}%)" for s in split) or "nothing"
            click.echo(f"{env}: {served} at {_shown(found['at'])}")
        return
    for env, changes in environments.items():
        click.echo(f"{env}:")
        if not changes:
            click.echo("  (never served)")
        for change in changes:
            click.echo(f"  {_shown(change['at'])}  v{change['version']} → {change['weight']}%")


@click.command()
@click.argument("model", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (a log: it can be long).")
@state_dir_option
@server_option
def audit(model: str | None, limit: int | None, as_json: bool, state_dir: Path, server: str | None) -> None:
    """The append-only audit log (of MODEL): who did what, when and why."""
    from controller.backends.store import AuditEntry
    from controller.engine.documents import audit_document

    if server:
        entries = _remote(server, "audit/entries", {"model": model, "limit": limit})
    else:
        with existing_store(state_dir) as store:
            entries = audit_document(store, model=model, limit=limit)
    for data in entries:
        if as_json:
            click.echo(json.dumps(data, sort_keys=True))
            continue
        entry = AuditEntry(**{**data, "at": datetime.fromisoformat(data["at"])})
        what = entry.subject
        why = entry.detail.get("reason") or entry.detail.get("why") or entry.detail.get("comment") or ""
        click.echo(f"{_when(entry.at)}  {entry.actor:<12} {entry.action:<24} {what}  {why}".rstrip())

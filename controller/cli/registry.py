"""``flywheel versions``, ``history`` and ``audit``: what the registry and the audit log hold.

``flywheel models`` (every model's state) is in :mod:`controller.cli.status`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from controller.cli.options import echo_json, existing_store, json_option, state_dir_option


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@click.command()
@click.argument("model")
@json_option
@state_dir_option
def versions(model: str, as_json: bool, state_dir: Path) -> None:
    """The versions of MODEL with their lineage (run, commit, metrics, artifact digest)."""
    with existing_store(state_dir) as store:
        found = store.list_versions(model)
        if not found:
            raise click.ClickException(f"{model} has no registered versions")
        if as_json:
            rows = [
                {
                    "version": v.number,
                    "content_id": v.content_id,
                    "run": v.run_id,
                    "reused_from": store.get_run(v.run_id).reused_from,
                    "commit": v.commit,
                    "artifact_digest": v.artifact_digest,
                    "artifact_uri": v.artifact_uri,
                    "environment_hash": v.environment_hash,
                    "data_fingerprints": v.data_fingerprints,
                    "params": v.params,
                    "metrics": v.metrics,
                    "created_at": v.created_at.isoformat(),
                }
                for v in found
            ]
            echo_json(rows)
            return
        click.echo(f"{'VERSION':<8} {'CREATED (UTC)':<20} {'COMMIT':<11} {'RUN':<6} {'ARTIFACT':<20} METRICS")
        for v in found:
            metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
            click.echo(
                f"v{v.number:<7} {_when(v.created_at):<20} {v.commit[:10]:<11} {v.run_id:<6} "
                f"{v.artifact_digest[:19]:<20} {metrics}"
            )


@click.command()
@click.argument("model")
@click.option("--env", "environment", default=None, help="Only this environment.")
@click.option(
    "--at", "at", default=None, help="Which versions served at this time (ISO 8601, UTC if no zone)."
)
@json_option
@state_dir_option
def history(model: str, environment: str | None, at: str | None, as_json: bool, state_dir: Path) -> None:
    """What served MODEL in each environment: every traffic change, or the split at one time (--at)."""
    when = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError as exc:
            raise click.BadParameter(f"{at!r} is not an ISO 8601 time", param_hint="--at") from exc
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    with existing_store(state_dir) as store:
        environments = sorted({s for r in store.rollouts_for(model) for s in r.stages})
        if environment is not None:
            environments = [environment]
        if not environments:
            raise click.ClickException(f"{model} has never been rolled out")
        if when is not None:
            splits = {env: store.served_at(environment=env, model=model, at=when) for env in environments}
            if as_json:
                echo_json(
                    {
                        "model": model,
                        "at": when.isoformat(),
                        "environments": {
                            env: [{"version": v, "weight": w} for v, w in split]
                            for env, split in splits.items()
                        },
                    }
                )
                return
            for env, split in splits.items():
                served = ", ".join(f"v{v} ({w}%)" for v, w in split) or "nothing"
                click.echo(f"{env}: {served} at {_when(when)}")
            return
        records = {env: store.serving_history(environment=env, model=model) for env in environments}
    if as_json:
        echo_json(
            {
                "model": model,
                "at": None,
                "environments": {
                    env: [{"at": r.at.isoformat(), "version": r.version, "weight": r.weight} for r in changes]
                    for env, changes in records.items()
                },
            }
        )
        return
    for env, changes in records.items():
        click.echo(f"{env}:")
        if not changes:
            click.echo("  (never served)")
        for record in changes:
            click.echo(f"  {_when(record.at)}  v{record.version} → {record.weight}%")


@click.command()
@click.argument("model", required=False)
@click.option("--limit", type=int, default=None, help="Only the newest N entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (a log: it can be long).")
@state_dir_option
def audit(model: str | None, limit: int | None, as_json: bool, state_dir: Path) -> None:
    """The append-only audit log (of MODEL): who did what, when and why."""
    with existing_store(state_dir) as store:
        entries = store.audit(model=model, limit=limit)
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry.to_json(), sort_keys=True))
            continue
        what = entry.subject
        why = entry.detail.get("reason") or entry.detail.get("why") or entry.detail.get("comment") or ""
        click.echo(f"{_when(entry.at)}  {entry.actor:<12} {entry.action:<24} {what}  {why}".rstrip())

"""``flywheel models`` and ``flywheel status MODEL``: what each model's rollout is doing, and why.

Both read :mod:`controller.engine.status` (the store, and main's specs from
``--repo`` when they can be read: canary steps, analysis limits, who may
approve) and the open discrepancies between what serves and the store
(:func:`controller.engine.observed.open_discrepancies`, from the audit log)
as the documents of :mod:`controller.engine.documents`, and only render them,
as text or ``--json``. With ``--server`` they read the same documents from a
shared Flywheel's dashboard API (:class:`controller.cli.client.Server`) and
render them the same way. Neither takes the controller's lock: they work while it runs.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from controller.cli.options import (
    echo_json,
    echo_rows,
    server_option,
    shown,
    store_and_catalog,
    view_options,
)

if TYPE_CHECKING:
    from pydantic import TypeAdapter

    from controller.engine.observed import Discrepancy
    from controller.engine.status import (
        AnalysisRound,
        EnvironmentServing,
        ModelStatus,
        ReleaseRun,
        RolloutStatus,
    )

_options = view_options(
    "The GitOps repository whose main branch gives canary steps and who may approve; "
    "optional, read when it can be."
)
_WORDS = {
    "in_progress": "in progress",
    "rolling_back": "rolling back",
    "rolled_back": "rolled back",
}


@click.command()
@_options
@server_option
def models(repo: str, branch: str | None, as_json: bool, state_dir: Path, server: str | None) -> None:
    """Every model: latest version, its rollout's state (and why it holds or ended), what serves where."""
    found: list[dict[str, Any]]
    if server:
        from controller.cli.client import Server

        found = Server.from_environment(server).read("status")
    else:
        from controller.clock import SYSTEM_CLOCK
        from controller.engine.documents import models_document

        with store_and_catalog(repo, branch, state_dir) as (store, catalog):
            found = models_document(store, store, now=SYSTEM_CLOCK.now(), catalog=catalog)

    def lines(document: dict[str, Any]) -> list[str]:
        status, differs = _parsed(document)
        return [*_model_lines(status), *(f"  ↳ {d.message}" for d in differs)]

    echo_rows(
        found,
        as_json=as_json,
        to_json=lambda document: document,
        empty="no model versions registered yet",
        header=f"{'MODEL':<20} {'LATEST':<8} {'ROLLOUT':<44} SERVING",
        lines=lines,
    )


@click.command()
@click.argument("model")
@_options
@server_option
def status(
    model: str, repo: str, branch: str | None, as_json: bool, state_dir: Path, server: str | None
) -> None:
    """MODEL's rollout: stage, weight, canary step, the last analysis round, what it waits for."""
    from controller.engine.documents import Missing

    found: dict[str, Any]
    if server:
        from controller.cli.client import Server

        found = Server.from_environment(server).read(f"models/{quote(model, safe='')}/status")
        policy_read = True  # the server reads its own main's policy; --repo means nothing there
    else:
        from controller.clock import SYSTEM_CLOCK
        from controller.engine.documents import status_document

        with store_and_catalog(repo, branch, state_dir) as (store, catalog):
            try:
                found = status_document(store, store, model, now=SYSTEM_CLOCK.now(), catalog=catalog)
            except Missing as exc:
                raise click.ClickException(f"{exc.what} in {shown(state_dir)} ({exc.hint})") from exc
        policy_read = catalog is not None and model in catalog.models
    if as_json:
        echo_json(found)
        return
    parsed, differs = _parsed(found)
    for line in _status_lines(parsed, policy_read=policy_read):
        click.echo(line)
    for index, discrepancy in enumerate(differs):
        label = "observed:" if index == 0 else ""
        click.echo(f"  {label:<15} {discrepancy.message} ({discrepancy.kind})")


def _parsed(document: dict[str, Any]) -> tuple[ModelStatus, list[Discrepancy]]:
    """A status document (``--json``'s, locally or from a server) as the records the text is rendered from."""
    status, differs = _readers()
    return status.validate_python(document), differs.validate_python(document.get("discrepancies", []))


@functools.cache
def _readers() -> tuple[TypeAdapter[ModelStatus], TypeAdapter[list[Discrepancy]]]:
    from pydantic import TypeAdapter

    from controller.engine.observed import Discrepancy
    from controller.engine.status import ModelStatus

    return TypeAdapter(ModelStatus), TypeAdapter(list[Discrepancy])


# ------------------------------------------------------------------ rendering


def _model_lines(status: ModelStatus) -> list[str]:
    latest = f"v{status.latest_version}" if status.latest_version is not None else "-"
    rollout = _rollout_line(status.rollout) if status.rollout is not None else "-"
    line = f"{status.model:<20} {latest:<8} {rollout:<44} {_serving(status.serving)}".rstrip()
    return [line, *(f"  ↳ {note}" for note in _notes(status))]


def _rollout_line(rollout: RolloutStatus) -> str:
    words = _WORDS.get(rollout.condition, rollout.condition)
    if not rollout.active:
        return f"v{rollout.version} {words}"
    phase = _phase(rollout)
    return f"v{rollout.version} {words} in {rollout.stage or '-'}" + (f" ({phase})" if phase else "")


def _phase(rollout: RolloutStatus) -> str:
    if rollout.canary is not None:
        steps = f"/{rollout.canary.steps}" if rollout.canary.steps is not None else ""
        return f"canary {rollout.canary.step}{steps} at {rollout.canary.weight}%"
    gate = "approval gate" if rollout.approval is not None else "gate"
    return {"deploy": "deploying", "gate": gate, "promote": "promoting"}.get(rollout.state, "")


def _notes(status: ModelStatus) -> list[str]:
    """Why a rollout holds, is paused or ended badly, and a release run that did not become a version."""
    notes = []
    rollout = status.rollout
    if rollout is not None and rollout.reason and rollout.condition != "succeeded":
        notes.append(rollout.reason)
    run = status.release_run
    if run is not None and run.needs_attention:
        notes.append(_release_words(run))
    return notes


def _release_words(run: ReleaseRun) -> str:
    head = f"last {run.ref} run #{run.run} ({run.commit[:10]})"
    if run.outcome == "gates_failed":
        return f"{head} failed its gates: " + "; ".join(g.message for g in run.failed_gates)
    if run.outcome == "released":
        return f"{head} became v{run.version}"
    if run.error:
        return f"{head} {run.outcome}: {run.error.splitlines()[0]}"
    return f"{head}: {run.outcome}"


def _serving(serving: tuple[EnvironmentServing, ...]) -> str:
    parts = [
        f"{env.environment}=" + "+".join(f"v{s.version}:{s.weight}%" for s in env.shares)
        for env in serving
        if env.shares
    ]
    return " ".join(parts) or "-"


def _status_lines(status: ModelStatus, *, policy_read: bool) -> list[str]:
    lines = [status.model]
    latest = f"v{status.latest_version}" if status.latest_version is not None else "none yet"
    lines.append(f"  latest version: {latest}")
    lines.append(f"  serving:        {_serving(status.serving)}")
    rollout = status.rollout
    if rollout is None:
        lines.append("  rollout:        none yet")
    else:
        lines += _rollout_lines(rollout, policy_read=policy_read)
    run = status.release_run
    if run is not None:
        lines.append(f"  release run:    {_release_words(run).removeprefix('last ')}")
    return lines


def _rollout_lines(rollout: RolloutStatus, *, policy_read: bool) -> list[str]:
    words = _WORDS.get(rollout.condition, rollout.condition)
    stages = " → ".join(rollout.stages)
    lines = [f"  rollout:        v{rollout.version} {words} (#{rollout.id}: {stages})"]
    if rollout.active:
        lines.append(
            f"  stage:          {rollout.stage} ({rollout.stage_number} of {len(rollout.stages)}), "
            f"state {rollout.state}, {rollout.weight}% of its traffic on v{rollout.version}"
        )
    if rollout.reason:
        label = "why:" if not rollout.active else "reason:"
        lines.append(f"  {label:<15} {rollout.reason}")
    if rollout.paused is not None:
        when = f" at {_when(rollout.paused.at)}" if rollout.paused.at else ""
        lines.append(f"  paused:         by {rollout.paused.by}{when}")
    if rollout.canary is not None:
        canary = rollout.canary
        steps = f" of {canary.steps}" if canary.steps is not None else ""
        stable = f", v{canary.stable_version} stable" if canary.stable_version is not None else ""
        ends = f"; the step's time is up at {_when(canary.ends_at)}" if canary.ends_at else ""
        lines.append(f"  canary:         step {canary.step}{steps} at {canary.weight}%{stable}{ends}")
    if rollout.last_round is not None:
        lines += _round_lines(rollout.last_round)
    if rollout.approval is not None:
        approval = rollout.approval
        if approval.rule is not None and approval.required is not None:
            who = " or ".join(approval.groups)
            lines.append(
                f"  approval:       {approval.rule} in {approval.environment}: {approval.required} "
                f"from {who}; approved by {', '.join(approval.approvers) or 'nobody yet'}"
            )
        elif not policy_read:
            lines.append("  approval:       pass --repo to see who may approve")
    for index, wait in enumerate(rollout.waiting_for):
        label = "waiting for:" if index == 0 else ""
        when = "next round" if wait.kind == "analysis" else "until"
        until = f" ({when} {_when(wait.until)})" if wait.until else ""
        lines.append(f"  {label:<15} {wait.kind}: {wait.message}{until}")
    ended = f", ended {_when(rollout.finished_at)}" if rollout.finished_at else ""
    lines.append(f"  started:        {_when(rollout.started_at)}{ended}")
    return lines


def _round_lines(last: AnalysisRound) -> list[str]:
    when = _when(last.at) if last.at else "in an earlier step"
    limit = f" of {last.failure_limit}" if last.failure_limit is not None else ""
    decision = f", decision {last.decision}" if last.decision else ""
    lines = [
        f"  last analysis:  {last.outcome} ({when}){decision}; {last.failed_rounds}{limit} failed rounds"
    ]
    for check in last.checks:
        value = f"{check.value:.4g}" if check.value is not None else "no data"
        samples = f" from {check.samples} requests" if check.samples is not None else ""
        lines.append(f"    {check.check:<20} {value:>10}  needs {check.rule:<18} {check.outcome}{samples}")
    return lines


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"

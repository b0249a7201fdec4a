"""What a model's triggers decide, as pure functions: is a schedule tick due, which inputs have new data,
does the served model's drift start a retrain.

Called by :mod:`controller.engine.triggers`, which reads the clock, the
audit log and the data, and applies what these return. Nothing here reads
the time or the world.

A schedule fires at most once per evaluation: however many of its ticks
passed since it last fired (a controller that was down over several of
them), :func:`due_tick` returns only the latest one, so a restart never
works through a backlog.

Drift fires once per episode (:func:`drift_decision`): sustained drift of the
version serving the rollout's last environment proposes one retrain, and the
trigger re-arms only when that drift falls back under the threshold or
another version serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from controller.drift import DriftReport
from controller.drift.stats import NOT_ENOUGH_DATA
from controller.specs.types import Drift, Model, Schedule

__all__ = [
    "DRIFT_ANNOTATION",
    "RETRAIN_ANNOTATION",
    "TICK_ANNOTATION",
    "DriftDecision",
    "DriftEpisode",
    "Reason",
    "Version",
    "changed_inputs",
    "data_reason",
    "drift_decision",
    "drift_reason",
    "drift_table",
    "due_tick",
    "next_tick",
    "schedule_key",
    "schedule_reason",
]

RETRAIN_ANNOTATION = "flywheel.dev/retrain"  # why the spec on a retrain branch changed, in one line
TICK_ANNOTATION = "flywheel.dev/retrain-tick"  # the schedule tick a retrain is for (ISO 8601, in its zone)

DRIFT_ANNOTATION = "flywheel.dev/retrain-drift"  # when the drift episode a retrain is for fired (ISO 8601)

TriggerName = Literal["schedule", "dataChange", "drift"]


@dataclass(frozen=True)
class Version:
    """An input's version as the spec pins it: the field (``digest`` or ``version``) and its value."""

    pin: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"pin": self.pin, "value": self.value}


@dataclass(frozen=True)
class Reason:
    """Why a model retrains: what its spec on the retrain branch gets; what the audit and proposal say."""

    trigger: TriggerName
    title: str  # one line: the commit's subject and the pull request's title
    body: str  # a few lines of Markdown: the commit's body and the pull request's description
    pins: dict[str, Version] = field(default_factory=dict)  # data input -> its new pinned version
    annotations: dict[str, str] = field(default_factory=dict)
    detail: dict[str, object] = field(default_factory=dict)  # for the audit entry


def schedule_key(schedule: Schedule) -> str:
    """The schedule as one string, so an entry of the audit log says which schedule it was for."""
    return f"{schedule.cron} ({schedule.timezone})"


def due_tick(schedule: Schedule, *, since: datetime, now: datetime) -> datetime | None:
    """The latest tick of ``schedule`` after ``since`` and at or before ``now``; ``None`` when none is due."""
    zone = ZoneInfo(schedule.timezone)
    following = croniter(schedule.cron, since.astimezone(zone)).get_next(datetime)
    if following > now:
        return None
    # cron has a resolution of a minute: a tick at exactly ``now`` is found a second later
    latest: datetime = croniter(schedule.cron, now.astimezone(zone) + timedelta(seconds=1)).get_prev(datetime)
    return latest


def next_tick(schedule: Schedule, *, after: datetime) -> datetime:
    """The first tick of ``schedule`` after ``after``, in the schedule's time zone."""
    tick: datetime = croniter(schedule.cron, after.astimezone(ZoneInfo(schedule.timezone))).get_next(datetime)
    return tick


def schedule_reason(model: Model, schedule: Schedule, tick: datetime) -> Reason:
    """The retrain a due tick asks for: the tick written into the spec as an annotation."""
    stamp = tick.isoformat()
    line = f"schedule {schedule.cron!r} ({schedule.timezone}) ticked at {stamp}"
    return Reason(
        trigger="schedule",
        title=f"Retrain {model.name}: scheduled ({tick.strftime('%Y-%m-%d %H:%M')} {schedule.timezone})",
        body=(
            f"Flywheel retrains `{model.name}` on its schedule: `{schedule.cron}` in {schedule.timezone} "
            f"ticked at {stamp}.\n\nThe tick is written into `{model.spec_path}` "
            f"(`metadata.annotations.{TICK_ANNOTATION}`), so git records which tick trained this version."
        ),
        annotations={RETRAIN_ANNOTATION: line, TICK_ANNOTATION: stamp},
        detail={"schedule": schedule_key(schedule), "tick": stamp},
    )


def changed_inputs(known: Mapping[str, Version], observed: Mapping[str, Version]) -> list[str]:
    """The inputs whose observed version differs from the known one (an input first seen is not new data)."""
    return sorted(name for name, version in observed.items() if name in known and known[name] != version)


def data_reason(
    model: Model, changed: list[str], known: Mapping[str, Version], observed: Mapping[str, Version]
) -> Reason:
    """The retrain new data asks for: each changed input's new version pinned in the spec."""
    uris = {d.name: d.uri for d in model.data}
    lines = [
        f"- `{name}` ({uris.get(name, '?')}): {known[name].pin} `{known[name].value}` "
        f"→ `{observed[name].value}`"
        for name in changed
    ]
    pins = {name: observed[name] for name in changed}
    return Reason(
        trigger="dataChange",
        title=f"Retrain {model.name}: new data ({', '.join(changed)})",
        body=(
            f"Flywheel retrains `{model.name}` on new data:\n\n"
            + "\n".join(lines)
            + f"\n\nThe new versions are pinned in `{model.spec_path}`, so git records which data trained "
            "this version."
        ),
        pins=pins,
        annotations={RETRAIN_ANNOTATION: "new data: " + ", ".join(changed)},
        detail={
            "changed": {
                name: {"from": known[name].to_json(), "to": observed[name].to_json()} for name in changed
            }
        },
    )


# ---------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftEpisode:
    """A drift episode that fired: the version that drifted, where, and when its retrain was proposed."""

    environment: str
    version: str
    fired_at: datetime


@dataclass(frozen=True)
class DriftDecision:
    """What one look at the production version's drift asks for.

    ``fire``: sustained drift and no open episode, propose a retrain;
    ``rearm``: the open episode is over (the drift fell back under the
    threshold, or another version serves), the next sustained drift is a new
    episode; ``skip``: the version cannot be judged (no reference profile);
    ``wait``: nothing to do (and ``why`` says why, for ``flywheel triggers``).
    """

    action: Literal["fire", "rearm", "skip", "wait"]
    why: str
    drifted: tuple[str, ...] = ()  # fire: the features whose drift is sustained


def drift_decision(
    trigger: Drift,
    *,
    environment: str,
    version: str | None,
    report: DriftReport | None,
    episode: DriftEpisode | None,
) -> DriftDecision:
    """Decide from the drift table of ``version``, the version serving ``environment`` (the rollout's last).

    A feature counts when ``trigger.features`` names it (any feature when it
    names none). Drift is sustained when a counted feature has drifted for
    ``serving.drift.sustainedWindows`` windows in a row (the report says how
    many); one episode fires once. It is over when the latest window with
    enough rows has no counted feature drifting, or when another version
    serves; a window with too few rows changes nothing (it is never "no drift").
    """
    if version is None:
        return DriftDecision("wait", f"no version serves {environment}")
    if episode is not None and episode.version != version:
        return DriftDecision("rearm", f"{version} serves {environment} now "
                                      f"(the episode was {episode.version}'s)")
    if report is None:
        return DriftDecision("skip", f"{version} in {environment} is not watched for drift: its train step "
                                     "wrote no FLYWHEEL_REFERENCE_DATA")
    counted = [f for f in report.features if not trigger.features or f.feature in trigger.features]
    if not any(f.status != NOT_ENOUGH_DATA for f in counted):
        return DriftDecision("wait", f"{version} in {environment}: not enough data "
                                     f"(fewer than {report.settings.min_samples} rows in a window)")
    sustained = tuple(f.feature for f in counted if report.sustained_drift(f.feature))
    if episode is not None:
        if not any(f.drifted for f in counted):
            return DriftDecision("rearm", f"the drift of {version} in {environment} fell back under the "
                                          "threshold")
        return DriftDecision("wait", f"the drift episode of {version} in {environment} already proposed a "
                                     f"retrain ({episode.fired_at.isoformat()}); it re-arms when the drift "
                                     "falls back under the threshold or another version serves")
    if sustained:
        why = f"{version} in {environment} drifts: {', '.join(sustained)}"
        return DriftDecision("fire", why, sustained)
    drifting = [f.feature for f in counted if f.drifted]
    if drifting:
        windows = report.settings.sustained_windows
        why = f"{version} in {environment} drifts ({', '.join(drifting)}), not yet for {windows} window(s)"
        return DriftDecision("wait", why + " in a row")
    return DriftDecision("wait", f"{version} in {environment}: no drift")


def drift_table(report: DriftReport) -> str:
    """The drift table of ``report`` in Markdown, as the retrain's commit and proposal carry it."""
    lines = [
        "| feature | kind | samples | PSI | test | p-value | threshold | status | sustained |",
        "|---|---|---:|---:|---|---:|---:|---|---:|",
    ]
    windows = report.settings.sustained_windows
    for f in report.features:
        psi = "-" if f.psi is None else f"{f.psi:.4f}"
        p_value = "-" if f.p_value is None else f"{f.p_value:.3g}"
        lines.append(
            f"| {f.feature} | {f.kind} | {f.samples} | {psi} | {f.test} | {p_value} | {f.threshold:.3g} "
            f"| {f.status} | {report.sustained.get(f.feature, 0)}/{windows} |"
        )
    return "\n".join(lines)


def drift_reason(
    model: Model,
    *,
    environment: str,
    version: str,
    report: DriftReport,
    drifted: tuple[str, ...],
    now: datetime,
) -> Reason:
    """The retrain sustained drift asks for: the episode in the spec, the drift table in the body."""
    settings = report.settings
    stamp = now.isoformat()
    line = f"drift of {version} in {environment}: {', '.join(drifted)}"
    return Reason(
        trigger="drift",
        title=f"Retrain {model.name}: drift in {environment} ({', '.join(drifted)})",
        body=(
            f"Flywheel retrains `{model.name}`: the live inputs of {version} in {environment} drift from its "
            f"training data for {settings.sustained_windows} window(s) in a row "
            f"(PSI >= {settings.psi_alert:g} or p < threshold, at least {settings.min_samples} rows per "
            f"window). Latest window ({report.window}), {report.rows} rows:\n\n"
            + drift_table(report)
            + f"\n\nThe episode is written into `{model.spec_path}` "
            f"(`metadata.annotations.{DRIFT_ANNOTATION}`), so git records which drift started this retrain."
        ),
        annotations={RETRAIN_ANNOTATION: line, DRIFT_ANNOTATION: stamp},
        detail={"environment": environment, "version": version, "drifted": list(drifted),
                "table": report.to_json()},
    )

"""What a model's triggers decide, as pure functions: is a schedule tick due, which inputs have new data.

Called by :mod:`controller.engine.triggers`, which reads the clock, the
audit log and the data, and applies what these return. Nothing here reads
the time or the world.

A schedule fires at most once per evaluation: however many of its ticks
passed since it last fired (a controller that was down over several of
them), :func:`due_tick` returns only the latest one, so a restart never
works through a backlog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from controller.specs.types import Model, Schedule

__all__ = [
    "RETRAIN_ANNOTATION",
    "TICK_ANNOTATION",
    "Reason",
    "Version",
    "changed_inputs",
    "data_reason",
    "due_tick",
    "next_tick",
    "schedule_key",
    "schedule_reason",
]

RETRAIN_ANNOTATION = "flywheel.dev/retrain"  # why the spec on a retrain branch changed, in one line
TICK_ANNOTATION = "flywheel.dev/retrain-tick"  # the schedule tick a retrain is for (ISO 8601, in its zone)

TriggerName = Literal["schedule", "dataChange"]


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

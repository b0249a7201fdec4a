"""Each model's triggers as people read them: last firing, next firing and why (``flywheel triggers``).

Called by :mod:`controller.cli.triggers` with the store and the release
branch's catalog. It reads only the audit log (the triggers' record, see
:mod:`controller.engine.triggers`) and the specs, so it works with the
controller stopped, and shows what the controller would do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from controller.backends.data_versions import watchable
from controller.backends.store import AuditEntry
from controller.engine.trigger_plan import due_tick, next_tick, schedule_key
from controller.engine.triggers import ARMED, FAILED, FIRED, SKIPPED, TriggerRecords, TriggerState
from controller.specs.types import Catalog, Model

__all__ = ["TriggerStatus", "trigger_statuses"]


@dataclass(frozen=True)
class TriggerStatus:
    model: str
    trigger: str  # schedule | dataChange | drift
    watches: str  # the schedule (cron and zone), the data inputs watched, or the drift's environment
    last_fired: datetime | None
    next: str  # an ISO 8601 time, "due now", or "on new data"
    why: str

    def to_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "trigger": self.trigger,
            "watches": self.watches,
            "last_fired": self.last_fired.isoformat() if self.last_fired is not None else None,
            "next": self.next,
            "why": self.why,
        }


def trigger_statuses(
    records: TriggerRecords, catalog: Catalog, *, now: datetime, model: str | None = None
) -> list[TriggerStatus]:
    """A row per trigger of each model (or of ``model``) that has any, by model name."""
    rows: list[TriggerStatus] = []
    for name, spec in sorted(catalog.models.items()):
        if model is not None and name != model:
            continue
        if spec.triggers.schedule is None and not spec.triggers.data_change and spec.triggers.drift is None:
            continue
        entries = records.audit(model=name, actions=(ARMED, FIRED, SKIPPED, FAILED))
        state = TriggerState.read([e for e in entries if e.action != FAILED])
        if spec.triggers.schedule is not None:
            rows.append(_schedule_row(spec, entries, state, now))
        if spec.triggers.data_change:
            rows.append(_data_row(spec, entries, state))
        if spec.triggers.drift is not None:
            rows.append(_drift_row(spec, entries, state))
    return rows


def _last(entries: list[AuditEntry], trigger: str) -> tuple[AuditEntry | None, AuditEntry | None]:
    """The newest firing (or skip) of ``trigger``, and the newest failure after it."""
    fired = next(
        (e for e in reversed(entries) if e.action in (FIRED, SKIPPED) and e.detail.get("trigger") == trigger),
        None,
    )
    failed = next(
        (e for e in reversed(entries) if e.action == FAILED and e.detail.get("trigger") in (None, trigger)),
        None,
    )
    if failed is not None and fired is not None and failed.id < fired.id:
        failed = None
    return fired, failed


def _why(fired: AuditEntry | None, failed: AuditEntry | None, otherwise: str) -> str:
    if failed is not None:
        return f"failed ({failed.at.isoformat()}): {failed.detail.get('why')}"
    if fired is None:
        return otherwise
    if fired.action == SKIPPED:
        return f"{fired.detail.get('reason')}: skipped, {fired.detail.get('why')}"
    return f"{fired.detail.get('reason')} → {fired.detail.get('proposal')}"


def _schedule_row(
    model: Model, entries: list[AuditEntry], state: TriggerState, now: datetime
) -> TriggerStatus:
    schedule = model.triggers.schedule
    assert schedule is not None
    key = schedule_key(schedule)
    fired, failed = _last(entries, "schedule")
    if state.schedule != key or state.armed_at is None:
        upcoming, otherwise = (
            next_tick(schedule, after=now).isoformat(),
            "not armed yet: the controller arms it",
        )
    else:
        due = due_tick(schedule, since=state.last_tick or state.armed_at, now=now)
        upcoming = "due now" if due is not None else next_tick(schedule, after=now).isoformat()
        otherwise = f"armed {state.armed_at.isoformat()}; no tick since"
    return TriggerStatus(
        model=model.name,
        trigger="schedule",
        watches=key,
        last_fired=fired.at if fired is not None and fired.action == FIRED else None,
        next=upcoming,
        why=_why(fired, failed, otherwise),
    )


def _data_row(model: Model, entries: list[AuditEntry], state: TriggerState) -> TriggerStatus:
    parts = []
    for data in model.data:
        reason = watchable(data)
        parts.append(data.name if reason is None else f"{data.name} (not watched: {reason})")
    fired, failed = _last(entries, "dataChange")
    known = len(state.versions or {})
    otherwise = f"{known} input version(s) known; no new data since" if known else "not armed yet"
    return TriggerStatus(
        model=model.name,
        trigger="dataChange",
        watches=", ".join(parts) or "no data inputs",
        last_fired=fired.at if fired is not None and fired.action == FIRED else None,
        next="on new data",
        why=_why(fired, failed, otherwise),
    )


def _drift_row(model: Model, entries: list[AuditEntry], state: TriggerState) -> TriggerStatus:
    trigger, settings = model.triggers.drift, model.serving.drift
    assert trigger is not None
    where = model.rollout.stages[-1].environment if model.rollout.stages else "no environment"
    watches = (f"{where}: PSI >= {settings.psi_alert:g} or p < {settings.p_value:g}/features, "
               f"{settings.sustained_windows} window(s), {settings.min_samples} rows")
    if trigger.features:
        watches += f"; only {', '.join(trigger.features)}"
    fired, failed = _last(entries, "drift")
    if state.episode is not None:
        upcoming = (f"after the episode of {state.episode.version} (drift back under the threshold, or "
                    "another version)")
    else:
        upcoming = "on sustained drift"
    otherwise = "armed; no drift episode yet" if state.drift_armed else "not armed yet"
    return TriggerStatus(
        model=model.name,
        trigger="drift",
        watches=watches,
        last_fired=fired.at if fired is not None and fired.action == FIRED else None,
        next=upcoming,
        why=_why(fired, failed, otherwise),
    )

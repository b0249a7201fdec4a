"""The trigger engine: schedules, new data and drift start retrains, each one proposed through git.

Called by the controller's tick (:meth:`controller.app.Controller.tick`) with
the release branch's catalog. For every model with ``triggers.schedule``,
``triggers.dataChange`` or ``triggers.drift`` it decides, with the pure functions of
:mod:`controller.engine.trigger_plan`, whether there is a reason to retrain,
and hands the reason to the :class:`~controller.engine.retrain.RetrainProposer`,
which commits it on ``flywheel/retrain/<model>`` and proposes it. Nothing
is trained here: the proposal is trained, gated and reported like any other.

The audit log is the record (no table of its own): ``trigger.armed`` when a
trigger is first seen (a schedule starts counting then, data inputs' first
versions are the ones later versions are compared with), ``trigger.fired``
with the reason and what was proposed, ``trigger.skipped`` when a reason
needs no proposal (the release branch already pins that data), and
``trigger.failed`` when data cannot be read or a proposal cannot be made
(once while the same failure repeats; the reason is tried again). A restart
reads each model's last entries back, so a tick or a data version that fired
never fires again, and ticks missed while the controller was down fire once.

Drift is read (through a :class:`DriftReader`, every ``data_check_seconds``)
for the version serving the rollout's last environment. Its entries:
``trigger.armed`` when the trigger is first seen and when a drift episode is
over (the drift fell back, another version serves), ``trigger.fired`` once
per episode with the drift table, ``trigger.skipped`` once per version that
cannot be judged (no reference profile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from controller.backends.data import DataError
from controller.backends.data_versions import Observed, watchable
from controller.backends.store import AuditEntry, AuditLog
from controller.clock import Clock
from controller.drift import DriftReport
from controller.engine.retrain import RETRAIN_PREFIX, AlreadyOnMain, RetrainProposer
from controller.engine.trigger_plan import (
    DriftEpisode,
    Reason,
    Version,
    changed_inputs,
    data_reason,
    drift_decision,
    drift_reason,
    due_tick,
    next_tick,
    schedule_key,
    schedule_reason,
)
from controller.specs.types import Catalog, DataInput, Environment, Model

__all__ = [
    "ARMED",
    "FAILED",
    "FIRED",
    "SKIPPED",
    "DriftReader",
    "TriggerEngine",
    "TriggerRecords",
    "TriggerState",
    "admitting_retrains",
]

log = logging.getLogger("flywheel.triggers")

ACTOR = "flywheel"
ARMED = "trigger.armed"
FIRED = "trigger.fired"
SKIPPED = "trigger.skipped"
FAILED = "trigger.failed"
_RECORD = (ARMED, FIRED, SKIPPED)  # the entries a model's trigger state is read back from


class TriggerRecords(AuditLog, Protocol):
    """The audit log, which is the triggers' record."""


class VersionReader(Protocol):
    """:class:`controller.backends.data_versions.DataVersions`, or a test's stand-in."""

    def current(self, data: DataInput) -> Observed: ...


class DriftReader(Protocol):
    """Where the drift of a served model is read: the router's windows on one machine
    (:class:`controller.backends.serving.drift_source.ServedDrift`), or a test's stand-in."""

    def production(self, *, environment: Environment, model: str) -> tuple[str | None, DriftReport | None]:
        """The version of ``model`` with the most traffic in ``environment`` (``None``: none serves) and its
        drift (``None``: not watched, it has no reference profile); raises when it cannot be read."""


@dataclass
class TriggerState:
    """One model's triggers as the audit log has them (and, in memory, when data is next read)."""

    schedule: str | None = None  # the schedule armed (cron and zone); another one arms again
    armed_at: datetime | None = None  # when it was armed: its ticks count from then
    last_tick: datetime | None = None  # the last tick that fired
    versions: dict[str, Version] | None = None  # each watched input's last known version; None: not armed
    last: AuditEntry | None = None  # the newest armed/fired/skipped entry
    next_check: float = 0.0  # clock.monotonic() when data is read next
    due_at: float | None = None  # when the schedule's next tick is (a timestamp); None: not read yet
    failures: set[str] = field(default_factory=set)  # audited while they repeat, so each is audited once
    failing: bool = False  # something failed in this evaluation
    drift_armed: bool = False  # the drift trigger has been seen (audited once)
    episode: DriftEpisode | None = None  # the drift episode that fired and is not over
    drift_skipped: str | None = None  # the version last skipped (audited once per version)
    next_drift_check: float = 0.0  # clock.monotonic() when drift is read next

    @classmethod
    def read(cls, entries: list[AuditEntry]) -> TriggerState:
        """The state the entries (oldest first) leave."""
        state = cls()
        for entry in entries:
            state.apply(entry)
        return state

    def apply(self, entry: AuditEntry) -> None:
        detail = entry.detail
        self.last = entry
        self.due_at = None
        if detail.get("trigger") == "schedule":
            if entry.action == ARMED or detail.get("schedule") != self.schedule:
                self.schedule, self.armed_at, self.last_tick = str(detail.get("schedule")), entry.at, None
            if entry.action != ARMED and detail.get("tick"):
                self.last_tick = datetime.fromisoformat(str(detail["tick"]))
        elif detail.get("trigger") == "drift":
            if entry.action == ARMED:
                self.drift_armed, self.episode = True, None
            elif entry.action == FIRED:
                where, version = str(detail.get("environment")), str(detail.get("version"))
                self.episode = DriftEpisode(where, version, entry.at)
            elif entry.action == SKIPPED:
                self.drift_skipped = str(detail.get("version"))
        elif detail.get("trigger") == "dataChange" and isinstance(detail.get("versions"), dict):
            self.versions = {
                name: Version(str(v["pin"]), str(v["value"])) for name, v in detail["versions"].items()
            }


@dataclass
class TriggerEngine:
    records: TriggerRecords
    catalog: Callable[[], Catalog]  # the release branch's
    proposer: RetrainProposer
    versions: VersionReader
    clock: Clock
    data_check_seconds: float = 300.0  # also how often drift is read
    drift: DriftReader | None = None  # without one, drift triggers fail saying so
    _states: dict[str, TriggerState] = field(default_factory=dict, init=False, repr=False)

    def tick(self) -> set[str]:
        """Evaluate every model's triggers once; the retrain branches proposed (to reconcile now)."""
        proposed: set[str] = set()
        now = self.clock.now()
        catalog = self.catalog()
        for name, model in sorted(catalog.models.items()):
            triggers = model.triggers
            if triggers.schedule is None and not triggers.data_change and triggers.drift is None:
                continue
            state = self.state(name)
            state.failing = False
            try:
                if triggers.schedule is not None:
                    proposed |= self._schedule(model, state, now)
                if triggers.data_change:
                    proposed |= self._data(model, state)
                if triggers.drift is not None:
                    proposed |= self._drift(model, state, catalog, now)
            except Exception as exc:  # one model's failure never stops the others'
                self._failed(model, state, "proposing a retrain", exc)
            if not state.failing:
                state.failures.clear()
        return proposed

    def state(self, model: str) -> TriggerState:
        state = self._states.get(model)
        if state is None:
            state = TriggerState.read(self.records.audit(model=model, actions=_RECORD))
            self._states[model] = state
        return state

    # ------------------------------------------------------------ schedule

    def _schedule(self, model: Model, state: TriggerState, now: datetime) -> set[str]:
        schedule = model.triggers.schedule
        assert schedule is not None
        key = schedule_key(schedule)
        if state.schedule != key or state.armed_at is None:
            self._audit(model, state, ARMED, {"trigger": "schedule", "schedule": key})
            return set()
        since = state.last_tick or state.armed_at
        if state.due_at is None:  # cron is read once per firing, not on every tick
            state.due_at = next_tick(schedule, after=since).timestamp()
        if now.timestamp() < state.due_at:
            return set()
        tick = due_tick(schedule, since=since, now=now)
        if tick is None:
            return set()
        return self._fire(model, state, schedule_reason(model, schedule, tick), {"trigger": "schedule"})

    # ---------------------------------------------------------------- data

    def _data(self, model: Model, state: TriggerState) -> set[str]:
        if self.clock.monotonic() < state.next_check:
            return set()
        state.next_check = self.clock.monotonic() + self.data_check_seconds
        observed: dict[str, Version] = {}
        for data in model.data:
            if watchable(data) is not None:
                continue
            try:
                current = self.versions.current(data)
            except DataError as exc:
                self._failed(model, state, "reading data", exc, trigger="dataChange")
                continue
            observed[data.name] = Version(current.pin, current.value)
        known = state.versions
        if known is None or not set(observed) <= set(known):  # inputs seen for the first time
            versions = {**observed, **(known or {})}
            if versions != known:
                self._audit(model, state, ARMED, {"trigger": "dataChange", "versions": _json(versions)})
        known = state.versions or {}
        changed = changed_inputs(known, observed)
        if not changed:
            return set()
        reason = data_reason(model, changed, known, observed)
        versions = {**known, **observed}
        return self._fire(model, state, reason, {"trigger": "dataChange", "versions": _json(versions)})

    # --------------------------------------------------------------- drift

    def _drift(self, model: Model, state: TriggerState, catalog: Catalog, now: datetime) -> set[str]:
        trigger = model.triggers.drift
        assert trigger is not None
        if self.clock.monotonic() < state.next_drift_check or not model.rollout.stages:
            return set()
        state.next_drift_check = self.clock.monotonic() + self.data_check_seconds
        name = model.rollout.stages[-1].environment
        if not state.drift_armed:
            self._audit(model, state, ARMED, {"trigger": "drift", "environment": name})
        environment = catalog.environments.get(name)
        if environment is None or self.drift is None:
            why = f"no environment {name!r}" if environment is None else "this controller reads no drift"
            self._failed(model, state, "reading drift", RuntimeError(why), trigger="drift")
            return set()
        try:
            version, report = self.drift.production(environment=environment, model=model.name)
        except Exception as exc:  # a router that is down: tried again at the next check
            self._failed(model, state, f"reading the drift of {name}", exc, trigger="drift")
            return set()
        decision = drift_decision(
            trigger, environment=name, version=version, report=report, episode=state.episode
        )
        where = {"trigger": "drift", "environment": name, "version": version, "why": decision.why}
        if decision.action == "rearm":
            self._audit(model, state, ARMED, where)
        elif decision.action == "skip" and state.drift_skipped != version:
            self._audit(model, state, SKIPPED, {**where, "reason": f"drift of {model.name} not judged"})
        elif decision.action == "fire":
            assert version is not None and report is not None
            reason = drift_reason(
                model, environment=name, version=version, report=report, drifted=decision.drifted, now=now
            )
            return self._fire(model, state, reason, {"trigger": "drift"})
        return set()

    # ---------------------------------------------------------- proposing

    def _fire(self, model: Model, state: TriggerState, reason: Reason, record: dict[str, Any]) -> set[str]:
        detail: dict[str, Any] = {**record, **reason.detail, "reason": reason.title, "body": reason.body}
        try:
            proposed = self.proposer.propose(model, reason)
        except AlreadyOnMain as exc:
            self._audit(model, state, SKIPPED, {**detail, "why": str(exc)})
            return set()
        self._audit(model, state, FIRED, {**detail, **proposed.to_json()})
        log.info("%s: %s (%s)", model.name, reason.title, proposed.proposal, extra={"model": model.name})
        return {proposed.branch}

    def _audit(self, model: Model, state: TriggerState, action: str, detail: dict[str, Any]) -> None:
        entry = self.records.append_audit(actor=ACTOR, action=action, model=model.name, detail=detail)
        state.apply(entry)

    def _failed(
        self, model: Model, state: TriggerState, doing: str, exc: Exception, *, trigger: str | None = None
    ) -> None:
        failure = f"{doing}: {exc}"
        state.failing = True
        if failure in state.failures:
            return
        state.failures.add(failure)
        log.error("%s: %s", model.name, failure, extra={"model": model.name})
        detail = {"why": failure} if trigger is None else {"why": failure, "trigger": trigger}
        self.records.append_audit(actor=ACTOR, action=FAILED, model=model.name, detail=detail)


Admit = Callable[[str, str], tuple[bool, str]]


def admitting_retrains(records: TriggerRecords, admits: Admit) -> Admit:
    """The trust gate's ``admits``, which also lets a retrain commit Flywheel made itself run.

    On GitHub the retrain's pull request is by Flywheel's own account, which
    main's policy need not name; its head runs when it is the commit the
    last ``trigger.fired`` entry of that model made on that branch (its
    tree is its parent's with the spec edited). Any other head of the branch
    (someone pushed to it) is left to ``admits``.
    """

    def admit(branch: str, head: str) -> tuple[bool, str]:
        model = branch.removeprefix(RETRAIN_PREFIX)
        if model != branch:
            fired = records.audit(model=model, actions=(FIRED,), limit=1)
            if fired and fired[-1].detail.get("branch") == branch and fired[-1].detail.get("commit") == head:
                return True, f"{head[:12]} is the retrain Flywheel committed on {branch}"
        return admits(branch, head)

    return admit


def _json(versions: dict[str, Version]) -> dict[str, Any]:
    return {name: version.to_json() for name, version in sorted(versions.items())}

"""The trigger engine: schedules and new data start retrains, each one proposed through git.

Called by the controller's tick (:meth:`controller.app.Controller.tick`) with
the release branch's catalog. For every model with ``triggers.schedule`` or
``triggers.dataChange`` it decides, with the pure functions of
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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Unpack

from controller.backends.data import DataError
from controller.backends.data_versions import Observed, watchable
from controller.backends.store import AuditEntry, NewAuditEntry
from controller.clock import Clock
from controller.engine.retrain import RETRAIN_PREFIX, AlreadyOnMain, RetrainProposer
from controller.engine.trigger_plan import (
    Reason,
    Version,
    changed_inputs,
    data_reason,
    due_tick,
    next_tick,
    schedule_key,
    schedule_reason,
)
from controller.specs.types import Catalog, DataInput, Model

__all__ = [
    "ARMED",
    "FAILED",
    "FIRED",
    "SKIPPED",
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


class TriggerRecords(Protocol):
    """The audit log, which is the triggers' record."""

    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry: ...

    def audit(
        self,
        *,
        model: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        actions: Collection[str] | None = None,
    ) -> list[AuditEntry]: ...


class VersionReader(Protocol):
    """:class:`controller.backends.data_versions.DataVersions`, or a test's stand-in."""

    def current(self, data: DataInput) -> Observed: ...


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
    data_check_seconds: float = 300.0
    _states: dict[str, TriggerState] = field(default_factory=dict, init=False, repr=False)

    def tick(self) -> set[str]:
        """Evaluate every model's triggers once; the retrain branches proposed (to reconcile now)."""
        proposed: set[str] = set()
        now = self.clock.now()
        for name, model in sorted(self.catalog().models.items()):
            triggers = model.triggers
            if triggers.schedule is None and not triggers.data_change:
                continue
            state = self.state(name)
            state.failing = False
            try:
                if triggers.schedule is not None:
                    proposed |= self._schedule(model, state, now)
                if triggers.data_change:
                    proposed |= self._data(model, state)
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

    # ---------------------------------------------------------- proposing

    def _fire(self, model: Model, state: TriggerState, reason: Reason, record: dict[str, Any]) -> set[str]:
        detail: dict[str, Any] = {**record, **reason.detail, "reason": reason.title}
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

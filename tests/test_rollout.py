"""The rollout state machine, driven through fake serving and scripted metrics on a real store.

Pins down: a good version goes staging → canary steps → approval gate →
production and retires the one it replaced; a failing canary rolls back on
its own with the stable version keeping all traffic; a canary without data
holds and never promotes; approvals by the wrong people are refused and
audited; a restarted engine resumes the same step without deploying or
announcing anything twice; pause, resume, promote, abort and rollback act
as their names say.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.backends.metrics import Measurement
from controller.backends.metrics.fake import FakeMetrics
from controller.backends.notify.fake import FakeNotifier
from controller.backends.serving import ServedVersion
from controller.backends.serving.fake import FakeServing
from controller.backends.store import ModelVersion, RolloutRecord, open_store
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.engine.commands import Actor, Commands
from controller.engine.notices import NotifierSender
from controller.engine.outbox import deliver_due
from controller.engine.rollout import RolloutEngine
from controller.engine.rollout_state import load_requests, load_state
from controller.specs import load_tree
from controller.specs.types import Catalog, Model

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "success-rate": Measurement(value=1.0, samples=100),
    "latency-p99": Measurement(value=0.05, samples=100),
    "enough-traffic": Measurement(value=100.0, samples=100),
}


@dataclass
class World:
    store: SqlStore
    catalog: Catalog
    serving: FakeServing
    metrics: FakeMetrics
    clock: FakeClock
    tmp: Path
    notifier: FakeNotifier = field(default_factory=FakeNotifier)

    def engine(self) -> RolloutEngine:
        def served(version: ModelVersion, model: Model) -> ServedVersion:
            return ServedVersion(
                model=model.name,
                version=f"v{version.number}",
                artifact_uri=str(self.tmp),
                serving=model.serving,
            )

        return RolloutEngine(
            rollouts=self.store,
            approvals=self.store,
            registry=self.store,
            audit=self.store,
            outbox=self.store,
            transactions=self.store,
            serving=self.serving,
            metrics=lambda env: self.metrics,
            catalog=lambda: self.catalog,
            served_version=served,
            clock=self.clock,
        )

    def commands(self) -> Commands:
        return Commands(store=self.store, catalog=lambda: self.catalog, clock=self.clock)

    def register(self, number_hint: int) -> ModelVersion:
        run = self.store.create_run(
            model="iris",
            ref="main",
            commit=f"{number_hint:040d}",
            cache_key=f"k{number_hint}",
            status="succeeded",
        )
        return self.store.register_version(
            model="iris",
            run_id=run.id,
            commit=run.commit,
            artifact_digest=f"sha256:{number_hint}",
            artifact_uri=str(self.tmp),
            environment_hash="env",
            metrics={"accuracy": 0.9},
        )

    def good_metrics(self, version: str) -> None:
        for check, measurement in GOOD.items():
            self.metrics.set(check, version, measurement)

    def deliver(self) -> list[str]:
        deliver_due(
            self.store, {"console": NotifierSender(self.notifier)}, now=self.clock.now() + timedelta(days=1)
        )
        return self.notifier.kinds()

    def rollout(self, version: int):  # type: ignore[no-untyped-def]
        return next(r for r in self.store.rollouts_for("iris") if r.version == version)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FakeClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))  # long past: the store must follow it
    store = open_store(tmp_path / "state", clock=clock)
    catalog = load_tree(ROOT)
    assert "iris" in catalog.models
    yield World(store, catalog, FakeServing(), FakeMetrics(), clock, tmp_path)
    store.close()


def _reason(rollout: RolloutRecord) -> str:
    outcome = load_state(rollout).outcome
    return outcome.reason if outcome is not None else ""


def _step_started(rollout: RolloutRecord) -> datetime | None:
    canary = load_state(rollout).canary
    return canary.started_at if canary is not None else None


def _settle(world: World, engine: RolloutEngine, *, seconds: float = 0.0, ticks: int = 30) -> None:
    for _ in range(ticks):
        engine.tick()
        world.clock.advance(seconds)


def _approve(world: World, version: int, user: str = "carol") -> None:
    outcome = world.commands().decide(Actor("cli", user), decision="approve", model="iris", version=version)
    assert outcome.ok, outcome.message


def _first_to_production(world: World, engine: RolloutEngine) -> ModelVersion:
    v1 = world.register(1)
    model = world.catalog.models["iris"]
    engine.start(v1, model, author="alice")
    _settle(world, engine)
    assert world.rollout(1).state == "gate" and world.rollout(1).environment == "production"
    _approve(world, 1)
    _settle(world, engine)
    assert world.rollout(1).state == "succeeded"
    return v1


def _to_canary(world: World, engine: RolloutEngine) -> ModelVersion:
    _first_to_production(world, engine)
    v2 = world.register(2)
    engine.start(v2, world.catalog.models["iris"], author="alice")
    _settle(world, engine, ticks=5)
    rollout = world.rollout(2)
    assert (rollout.state, rollout.environment, rollout.step_index) == ("canary", "production", 0)
    return v2


def test_good_version_goes_through_every_stage_and_retires_the_previous(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    assert world.serving.traffic("production", "iris") == {"v2": 20, "v1": 80}
    assert world.serving.traffic("staging", "iris") == {"v2": 100}
    world.good_metrics("v2")
    _settle(world, engine, seconds=11, ticks=4)  # 30 s step, analysis every 10 s
    assert world.rollout(2).step_index == 1
    assert world.serving.traffic("production", "iris") == {"v2": 50, "v1": 50}
    _settle(world, engine, seconds=11, ticks=4)
    assert world.rollout(2).state == "gate"  # canary done; production-signoff needed
    _settle(world, engine, seconds=60, ticks=3)
    assert world.rollout(2).state == "gate"  # waits for people, not for time
    _approve(world, 2, "dave")
    _settle(world, engine, ticks=3)
    rollout = world.rollout(2)
    assert rollout.state == "succeeded" and rollout.finished_at is not None
    assert world.serving.traffic("production", "iris") == {"v2": 100}
    assert ("production", "iris", "v1") not in world.serving.running
    served = world.store.served_at(environment="production", model="iris", at=world.clock.now())
    assert served == [(2, 100)]
    kinds = world.deliver()
    for kind in ("rollout_started", "step_reached", "awaiting_approval", "approved", "promoted"):
        assert kind in kinds
    actions = [e.action for e in world.store.audit(model="iris")]
    assert "rollout.deployed" in actions and "rollout.succeeded" in actions and "approval.approve" in actions


def test_a_transition_and_its_records_are_written_together_or_not_at_all(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = world.engine()
    v1 = world.register(1)
    engine.start(v1, world.catalog.models["iris"], author="alice")
    append = world.store.append_audit

    def crash_on_deployed(**entry: Any) -> Any:
        if entry["action"] == "rollout.deployed":
            raise SystemExit("killed while writing the transition's records")
        return append(**entry)

    monkeypatch.setattr(world.store, "append_audit", crash_on_deployed)
    with pytest.raises(SystemExit):
        engine.tick()
    assert world.rollout(1).state == "deploy"  # the transition went with its records
    assert "rollout.deployed" not in [e.action for e in world.store.audit(model="iris")]
    monkeypatch.undo()
    engine.tick()  # the restart: deploys again (idempotent) and writes all of it once
    actions = [e.action for e in world.store.audit(model="iris")]
    assert actions.count("rollout.deployed") == 1 and world.rollout(1).state != "deploy"


def test_failing_canary_rolls_back_by_itself_and_stable_keeps_all_traffic(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    world.good_metrics("v2")
    world.metrics.set("success-rate", "v2", Measurement(value=0.7, samples=100))
    _settle(world, engine, seconds=11, ticks=6)
    rollout = world.rollout(2)
    assert rollout.state == "rolled_back"
    assert rollout.analysis_failures == 2  # failureLimit 2 in specs/iris
    assert world.serving.traffic("production", "iris") == {"v1": 100}
    assert ("production", "iris", "v2") not in world.serving.running
    assert world.store.served_at(environment="production", model="iris", at=world.clock.now()) == [(1, 100)]
    assert "rolled_back" in world.deliver()
    assert "success-rate = 0.7" in _reason(rollout)


def test_canary_without_traffic_holds_as_inconclusive_and_never_promotes(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    world.metrics.set("success-rate", "v2", Measurement.missing("no requests in the window", samples=0))
    world.metrics.set("latency-p99", "v2", Measurement.missing("no requests in the window", samples=0))
    world.metrics.set("enough-traffic", "v2", Measurement(value=0.0, samples=0))
    _settle(world, engine, seconds=11, ticks=40)  # far past both 30 s steps
    rollout = world.rollout(2)
    assert (rollout.state, rollout.step_index, rollout.analysis_failures) == ("canary", 0, 0)
    assert world.serving.traffic("production", "iris") == {"v2": 20, "v1": 80}
    last = load_state(rollout).last_round
    assert last is not None and last.decision.action == "hold"
    assert "inconclusive" in last.decision.reason
    kinds = world.deliver()
    assert kinds.count("analysis_inconclusive") == 1  # told once per hold, not every round
    assert "promoted" not in [k for k in kinds[kinds.index("analysis_inconclusive") :]]


def test_approval_by_outsider_or_author_is_refused_and_audited(world: World) -> None:
    engine = world.engine()
    v1 = world.register(1)
    engine.start(v1, world.catalog.models["iris"], author="carol")
    _settle(world, engine)
    commands = world.commands()
    outsider = commands.decide(Actor("cli", "alice"), decision="approve", model="iris", version=1)
    assert not outsider.ok and outsider.refusal == "not_in_groups"
    author = commands.decide(Actor("cli", "carol"), decision="approve", model="iris", version=1)
    assert not author.ok and author.refusal == "author"
    stranger = commands.decide(Actor("cli", "mallory"), decision="approve", model="iris", version=1)
    assert not stranger.ok and stranger.refusal == "unmapped"
    _settle(world, engine)
    assert world.rollout(1).state == "gate"
    refused = [e for e in world.store.audit(model="iris") if e.action == "command.refused"]
    assert [e.detail["refusal"] for e in refused] == ["not_in_groups", "author", "unmapped"]
    assert world.store.approvals_for(model="iris", version=1, environment="production") == []


def test_decisions_count_only_for_the_version_at_the_gate(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)  # v1 serves production; v2 is in its canary there
    commands = world.commands()
    superseded = commands.decide(Actor("cli", "dave"), decision="approve", model="iris", version=1)
    assert not superseded.ok and superseded.refusal == "not_at_gate"
    assert "v2 is" in superseded.message
    never = commands.decide(Actor("cli", "dave"), decision="approve", model="iris", version=9)
    assert not never.ok and never.refusal == "no_rollout"
    passed = commands.decide(
        Actor("cli", "dave"), decision="approve", model="iris", version=2, environment="staging"
    )
    assert not passed.ok and passed.refusal == "no_gate" and "past staging" in passed.message
    nowhere = commands.decide(
        Actor("cli", "dave"), decision="approve", model="iris", version=2, environment="qa"
    )
    assert not nowhere.ok and nowhere.refusal == "no_gate" and "production" in nowhere.message
    look_alike = commands.decide(Actor("cli", "dave\xa0"), decision="approve", model="iris", version=2)
    assert not look_alike.ok and look_alike.refusal == "unmapped"

    recorded = [
        a.user
        for number in (1, 2, 9)
        for env in ("staging", "production", "qa")
        for a in world.store.approvals_for(model="iris", version=number, environment=env)
    ]
    assert recorded == ["carol"]  # v1's own approval, from before: nothing new
    audit = world.store.audit(model="iris")
    refused = [e.detail["refusal"] for e in audit if e.action == "command.refused"]
    assert refused == ["not_at_gate", "no_rollout", "no_gate", "no_gate", "unmapped"]
    assert [e.actor for e in audit if e.action.startswith("approval.")] == ["carol"]
    world.deliver()
    assert [k for k in world.notifier.kinds() if k == "approved"] == ["approved"]  # v1's, once

    ahead = commands.decide(Actor("cli", "dave"), decision="approve", model="iris")  # v2's gate, ahead
    assert ahead.ok and "dave approved iris v2 for production" in ahead.message


def test_restarted_engine_resumes_the_same_step_without_repeating_anything(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    world.good_metrics("v2")
    _settle(world, engine, seconds=11, ticks=4)
    before = world.rollout(2)
    assert before.step_index == 1
    starts, changes = world.serving.starts, world.serving.weight_changes
    queued = len(world.store.due_messages(now=world.clock.now() + timedelta(days=1), limit=1000))
    # "kill -9": throw the engine away, build a new one on the same store and backends
    fresh = world.engine()
    fresh.tick()
    after = world.rollout(2)
    assert (after.state, after.step_index) == ("canary", 1)
    assert _step_started(after) == _step_started(before) is not None
    assert world.serving.starts == starts and world.serving.weight_changes == changes
    assert len(world.store.due_messages(now=world.clock.now() + timedelta(days=1), limit=1000)) == queued
    kinds = world.deliver()
    assert kinds.count("step_reached") == 2  # one per step, the restart added none


def test_pause_holds_resume_continues_promote_skips_the_wait(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    world.good_metrics("v2")
    commands = world.commands()
    assert commands.control(Actor("cli", "bob"), command="pause", model="iris", reason="lunch").ok
    _settle(world, engine, seconds=11, ticks=10)
    assert (world.rollout(2).state, world.rollout(2).step_index) == ("canary", 0)
    assert commands.control(Actor("cli", "bob"), command="resume", model="iris").ok
    engine.tick()  # one round passes now
    assert commands.control(Actor("cli", "bob"), command="promote", model="iris").ok
    engine.tick()
    assert world.rollout(2).step_index == 1  # no need to wait out the step
    denied = commands.control(Actor("cli", "carol"), command="promote", model="iris")
    assert not denied.ok and denied.refusal == "not_allowed"
    assert "paused" in world.deliver()


def test_abort_restores_the_stable_version(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    assert world.commands().control(Actor("cli", "erin"), command="abort", model="iris", reason="bad data").ok
    _settle(world, engine, ticks=3)
    rollout = world.rollout(2)
    assert rollout.state == "aborted" and "erin" in _reason(rollout)
    assert world.serving.traffic("production", "iris") == {"v1": 100}


def test_failed_smoke_test_never_sends_traffic_to_the_version(world: World) -> None:
    engine = world.engine()
    _first_to_production(world, engine)
    v2 = world.register(2)
    world.serving.fail_smoke.add(("iris", "v2"))
    engine.start(v2, world.catalog.models["iris"])
    _settle(world, engine, ticks=5)
    rollout = world.rollout(2)
    assert rollout.state == "failed" and "smoke test" in _reason(rollout)
    assert world.serving.traffic("staging", "iris") == {"v1": 100}
    assert world.serving.traffic("production", "iris") == {"v1": 100}


def test_rollback_after_a_finished_rollout_serves_the_previous_version(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    world.good_metrics("v2")
    _settle(world, engine, seconds=11, ticks=8)
    _approve(world, 2, "dave")
    _settle(world, engine, ticks=3)
    assert world.rollout(2).state == "succeeded"
    outcome = world.commands().control(
        Actor("cli", "alice"), command="rollback", model="iris", reason="complaints"
    )
    assert outcome.ok
    (event,) = world.store.claim_events(limit=5, worker="test")
    engine.handle_rollback_request(event.payload)
    assert world.serving.traffic("production", "iris") == {"v1": 100}
    assert world.store.served_at(environment="production", model="iris", at=world.clock.now()) == [(1, 100)]
    audited = world.store.audit(model="iris")
    rolled_back = {e.environment: e for e in audited if e.action == "rollout.rolled_back"}
    entry = rolled_back["production"]
    assert (entry.actor, entry.version) == ("alice", 2)
    assert entry.detail == {"to_version": 1, "reason": "complaints", "manual": True}
    told = [m.payload["event"] for m in world.store.due_messages(limit=1000) if m.destination == "console"]
    notice = next(e for e in told if e["kind"] == "rolled_back" and e["environment"] == "production")
    assert notice["version"] == 2 and notice["message"] == "Rolled back by alice to v1: complaints"


def test_commands_record_requests_and_never_change_the_state(world: World) -> None:
    engine = world.engine()
    _to_canary(world, engine)
    before = world.rollout(2)
    commands = world.commands()
    bob = Actor("cli", "bob")
    assert commands.control(bob, command="pause", model="iris", reason="lunch").ok
    again = commands.control(bob, command="pause", model="iris")
    assert again.ok and "already paused" in again.message  # the pending pause counts
    assert commands.control(bob, command="promote", model="iris").ok
    assert commands.control(Actor("cli", "erin"), command="abort", model="iris", reason="bad data").ok
    twice = commands.control(bob, command="rollback", model="iris")
    assert twice.ok and "already being stopped" in twice.message
    after = world.rollout(2)
    assert load_state(after) == load_state(before) and not after.paused
    assert [(r.kind, r.by, r.reason) for r in load_requests(after)] == [
        ("pause", "bob", "lunch"),
        ("promote", "bob", ""),
        ("abort", "erin", "bad data"),
    ]
    engine.tick()  # the planner takes them: the stop wins over the pause, and each is consumed
    rollout = world.rollout(2)
    assert rollout.state == "rolling_back" and load_requests(rollout) == ()
    assert rollout.paused and "abort by erin: bad data" in _reason(rollout)

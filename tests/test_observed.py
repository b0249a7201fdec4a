"""Observed state wins: what serves is compared with the store; a discrepancy is reported, never papered over.

Pinned down here:

* the pure comparison (:func:`controller.engine.observed.compare`), table by
  table: a version the store says serves that is not live or not routed is
  *missing*; a version routed (or running) that the store does not expect is
  *unexpected*; the same versions with other weights is *weights*; a router
  that cannot be read is *unknown* (never "nothing serves"), and is no news
  where nothing is expected; while an active rollout moves traffic, weights
  are not compared; a first deployment routed whole as it is deployed (as
  KServe does) is expected, until its rollout routes it;
* the serving watch, on fake serving and a real store: a production server
  killed behind the controller's back is audited and announced once (one
  outbox message, one ``serving.discrepancy``), not again on later ticks nor
  by a restarted controller, and audited ``serving.reconciled`` once it
  serves again; the controller restarts nothing by itself;
* the rollout engine does not paper over it: a canary whose stable server
  died holds where it is (no deploy, no routing, no round judged, no
  rollback of the good version), and goes on once the server is back; an
  unreachable router holds it the same way, never rolls it back, whatever
  the metrics source does; an abort still acts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.metrics.fake import FakeMetrics
from controller.backends.serving import ObservedServing
from controller.backends.serving.fake import FakeServing
from controller.backends.store import open_store
from controller.cli import main
from controller.clock import FakeClock
from controller.engine.commands import Actor
from controller.engine.observed import (
    DISCREPANCY,
    RECONCILED,
    Discrepancy,
    Expected,
    ServingWatch,
    compare,
    expected_serving,
    open_discrepancies,
)
from controller.engine.rollout import RolloutEngine
from controller.engine.rollout_actions import Save
from controller.engine.rollout_state import Outcome, RolloutState, StepProgress
from controller.specs import load_tree
from tests.test_rollout import ROOT, World, _first_to_production, _to_canary
from tests.test_rollout_plan import CONTINUE, NOW, PASSED, at, plan, request

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------ the comparison


def _seen(routes: dict[str, int] | None, live: set[str] = frozenset()) -> ObservedServing:  # type: ignore[assignment]
    if routes is None:
        return ObservedServing(environment="production", unknown="the router does not answer")
    return ObservedServing(environment="production", routes={"iris": routes}, live={"iris": frozenset(live)})


CASES = [
    # (what the store says, allowed, settling, router's routes (None: unreadable), live servers) -> found
    pytest.param({"v1": 100}, set(), False, {"v1": 100}, {"v1"}, [], id="agrees"),
    pytest.param({}, set(), False, {}, set(), [], id="nothing-expected-nothing-serves"),
    pytest.param({}, set(), False, None, set(), [], id="nothing-expected-router-down-is-no-news"),
    pytest.param(
        {"v1": 100}, set(), False, {"v1": 100}, set(), [("missing", "v1")], id="server-dead-still-routed"
    ),
    pytest.param({"v1": 100}, set(), False, {}, {"v1"}, [("missing", "v1")], id="live-but-not-routed"),
    pytest.param({"v1": 100}, set(), False, None, set(), [("unknown", None)], id="router-down-is-unknown"),
    pytest.param({}, {"v2"}, False, None, set(), [("unknown", None)], id="rollout-here-router-down"),
    pytest.param(
        {"v1": 100}, set(), False, {"v1": 70, "v3": 30}, {"v1", "v3"}, [("unexpected", "v3")],
        id="routed-not-expected",
    ),
    pytest.param(
        {"v1": 100}, set(), False, {"v1": 100}, {"v1", "v0"}, [("unexpected", "v0")],
        id="orphan-server-without-traffic",
    ),
    pytest.param({"v1": 100}, {"v2"}, False, {"v1": 100}, {"v1", "v2"}, [], id="rollout-version-may-run"),
    pytest.param(
        {"v1": 80, "v2": 20}, set(), False, {"v1": 50, "v2": 50}, {"v1", "v2"}, [("weights", None)],
        id="weights-differ",
    ),
    pytest.param(
        {"v1": 80, "v2": 20}, {"v2"}, True, {"v1": 50, "v2": 50}, {"v1", "v2"}, [],
        id="settling-weights-not-compared",
    ),
    pytest.param(
        {"v1": 100}, {"v2"}, True, {"v1": 100}, {"v2"}, [("missing", "v1")], id="settling-still-needs-live"
    ),
    pytest.param(
        {"v1": 100}, set(), False, {"v1": 100, "v2": 0}, {"v1"}, [], id="zero-weight-route-is-no-traffic"
    ),
]


@pytest.mark.parametrize(("want", "allowed", "settling", "routes", "live", "found"), CASES)
def test_compare(
    want: dict[str, int],
    allowed: set[str],
    settling: bool,
    routes: dict[str, int] | None,
    live: set[str],
    found: list[tuple[str, str | None]],
) -> None:
    expected = Expected("production", "iris", want, frozenset(allowed), settling)
    result = compare(expected, _seen(routes, live))
    assert [(d.kind, d.version) for d in result] == found
    for discrepancy in result:
        assert discrepancy.expected == want
        assert (discrepancy.observed is None) == (routes is None)
        assert "iris" in discrepancy.message and "production" in discrepancy.message


def test_expected_serving_reads_the_rollout_in_this_environment_only() -> None:
    state = RolloutState(model="iris", version=2, stages=("staging", "production"), stage_index=1)
    canary = RolloutState(
        model="iris", version=2, stages=("production",), phase="canary", canary=StepProgress(started_at=None)
    )
    routed = RolloutState(
        model="iris", version=2, stages=("production",), phase="canary",
        canary=StepProgress(started_at=None, routed=True),
    )
    served = [(1, 100), (3, 0)]
    quiet = expected_serving(environment="staging", model="iris", served=served, rollout=state)
    assert (quiet.weights, quiet.allowed, quiet.settling) == ({"v1": 100}, frozenset(), False)
    here = expected_serving(environment="production", model="iris", served=served, rollout=state)
    assert (here.allowed, here.settling) == (frozenset({"v2"}), False)
    assert expected_serving(environment="production", model="iris", served=served, rollout=canary).settling
    done = expected_serving(environment="production", model="iris", served=served, rollout=routed)
    assert not done.settling


def test_a_first_version_routed_whole_as_it_was_deployed_is_expected_until_the_rollout_routes_it() -> None:
    """KServe gives a model's first version all the traffic as it deploys it: not a discrepancy."""
    for phase in ("deploy", "gate"):
        first = RolloutState(model="iris", version=1, stages=("staging", "production"), stage_index=1,
                             phase=phase)  # type: ignore[arg-type]  # fmt: skip
        expected = expected_serving(environment="production", model="iris", served=[], rollout=first)
        assert expected.whole == "v1" and expected.weights == {}
        assert compare(expected, _seen({"v1": 100}, {"v1"})) == ()  # routed whole by the backend (KServe)
        assert compare(expected, _seen({}, {"v1"})) == ()  # not routed yet (the embedded home)
        found = compare(expected, _seen({"v0": 100}, {"v0"}))
        assert [(d.kind, d.version) for d in found] == [("unexpected", "v0")]  # another version is news
        found = compare(expected, _seen({"v1": 100}, set()))
        assert [(d.kind, d.version) for d in found] == [("missing", "v1")]  # routed, but not running
        found = compare(expected, _seen({"v1": 50}, {"v1"}))
        assert [(d.kind, d.version) for d in found] == [("unexpected", "v1")]  # whole, or not at all
    second = RolloutState(model="iris", version=2, stages=("production",), phase="gate", stable=1)
    served = [(1, 100)]
    assert (
        expected_serving(environment="production", model="iris", served=served, rollout=second).whole is None
    )
    replaced = replace(second, stable=None)  # something serves there already: not a first deployment
    assert (
        expected_serving(environment="production", model="iris", served=served, rollout=replaced).whole
        is None
    )
    canary = replace(replaced, phase="canary", canary=StepProgress(started_at=None, routed=True))
    assert expected_serving(environment="production", model="iris", served=[], rollout=canary).whole is None


def test_open_discrepancies_are_those_not_reconciled_since() -> None:
    missing = Discrepancy("production", "iris", "missing", "v1", "gone", {"v1": 100}, {"v1": 100})
    unknown = Discrepancy("staging", "iris", "unknown", None, "down", {"v1": 100}, None)
    from controller.backends.store import AuditEntry

    at = datetime(2026, 1, 1, tzinfo=UTC)
    entries = [
        AuditEntry(1, at, "flywheel", DISCREPANCY, detail=missing.to_json()),
        AuditEntry(2, at, "flywheel", DISCREPANCY, detail=unknown.to_json()),
        AuditEntry(3, at, "flywheel", "rollout.transition"),
        AuditEntry(4, at, "flywheel", RECONCILED, detail=missing.to_json()),
    ]
    assert list(open_discrepancies(entries).values()) == [unknown]
    assert Discrepancy.from_json(missing.to_json()) == missing


# ------------------------------------------------------------------ the planner holds


@pytest.mark.parametrize("phase", ["deploy", "canary", "gate", "promote"])
def test_a_discrepancy_holds_every_forward_phase(phase: str) -> None:
    state = at(phase, last_round=CONTINUE)
    if phase == "canary":  # its step is over with a passing round: it would go on
        over = StepProgress(NOW - timedelta(seconds=31), routed=True, last_round_at=NOW)
        state = replace(state, canary=over)
    seen = {"stable": 1, "verdict": PASSED, "approvals": ()}
    assert plan(state, **seen).actions != ()  # it would act
    held = plan(state, discrepancies=("v1 should take 80% of production",), **seen)
    if phase == "canary":  # nothing done but forgetting the round judged before the hold
        assert held.actions == (Save(replace(state, last_round=None), frozenset()),)
    else:
        assert held.actions == ()


def test_a_canary_goes_on_after_a_hold_only_on_a_round_judged_after_it() -> None:
    over = StepProgress(NOW - timedelta(seconds=31), routed=True, last_round_at=NOW)
    state = replace(at("canary", last_round=CONTINUE), canary=over)
    held = plan(state, stable=1, verdict=PASSED, approvals=(), discrepancies=("v1 is not live",))
    assert held.state.last_round is None and held.state.step_index == 0
    no_round_yet = plan(held.state, stable=1, verdict=None, approvals=())
    assert no_round_yet.state.step_index == 0  # the step's time is up, but no round since the hold
    fresh = replace(held.state, canary=replace(over, last_round_at=NOW - timedelta(seconds=60)))
    judged = plan(fresh, stable=1, verdict=PASSED, approvals=())
    assert judged.state.step_index == 1  # a passing round after the hold: it goes on


def test_a_discrepancy_does_not_hold_a_rollback_or_a_stop() -> None:
    differs = ("what serves iris in production is unknown",)
    rolling_back = at("rolling_back", outcome=Outcome("aborted", "abort"))
    back = plan(rolling_back, deployed=("v1",), discrepancies=differs)
    assert back.state.phase == "aborted"
    stopped = plan(at("canary"), requests=(request("abort", by="erin"),), discrepancies=differs)
    assert stopped.state.phase == "rolling_back"


# ------------------------------------------------------------------ the watch, applied


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FakeClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    store = open_store(tmp_path / "state", clock=clock)
    yield World(store, load_tree(ROOT), FakeServing(), FakeMetrics(), clock, tmp_path)
    store.close()


def _watch(world: World) -> ServingWatch:
    return ServingWatch(
        rollouts=world.store, audit=world.store, outbox=world.store, transactions=world.store,
        serving=world.serving, catalog=lambda: world.catalog, clock=world.clock,
    )


def _engine(world: World, watch: ServingWatch) -> RolloutEngine:
    engine = world.engine()
    engine.discrepancies = watch.holding
    return engine


def _tick(world: World, watch: ServingWatch, engine: RolloutEngine, *, ticks: int, seconds: float) -> None:
    """The controller's tick: the watch, then the rollouts."""
    for _ in range(ticks):
        watch.tick()
        engine.tick()
        world.clock.advance(seconds)


def _audited(world: World, action: str) -> list[dict[str, object]]:
    return [e.detail for e in world.store.audit(model="iris") if e.action == action]


def test_a_killed_production_server_is_reported_once_and_not_restarted(world: World) -> None:
    engine = world.engine()
    _first_to_production(world, engine)
    watch = _watch(world)
    assert watch.tick() == ()
    starts = world.serving.starts
    served_v1 = world.serving.running[("production", "iris", "v1")]
    world.serving.kill("production", "iris", "v1")
    for _ in range(3):
        (found,) = watch.tick()
        engine.tick()
    assert (found.kind, found.version, found.environment) == ("missing", "v1", "production")
    assert world.serving.starts == starts  # nothing re-deployed behind people's backs
    assert ("production", "iris", "v1") not in world.serving.running
    (audited,) = _audited(world, DISCREPANCY)
    assert audited["expected"] == {"v1": 100} and audited["observed"] == {"v1": 100}
    assert world.deliver().count("serving_discrepancy") == 1

    restarted = _watch(world)  # a restarted controller knows it was reported already
    assert restarted.tick() == (found,)
    assert len(_audited(world, DISCREPANCY)) == 1

    world.serving.deploy(environment=world.catalog.environments["production"], version=served_v1)
    assert restarted.tick() == ()
    (cleared,) = _audited(world, RECONCILED)
    assert cleared["kind"] == "missing" and cleared["version"] == "v1"
    assert restarted.tick() == () and len(_audited(world, RECONCILED)) == 1


def test_a_discrepancy_that_comes_back_is_reported_again(world: World) -> None:
    _first_to_production(world, world.engine())
    watch = _watch(world)
    production = world.catalog.environments["production"]
    served = world.serving.running[("production", "iris", "v1")]
    for _ in range(2):
        world.serving.kill("production", "iris", "v1")
        watch.tick()
        world.serving.deploy(environment=production, version=served)
        watch.tick()
    assert len(_audited(world, DISCREPANCY)) == 2 and len(_audited(world, RECONCILED)) == 2
    assert world.deliver().count("serving_discrepancy") == 2  # each occurrence told once


def test_a_canary_whose_stable_server_died_holds_instead_of_rolling_back(world: World) -> None:
    watch = _watch(world)
    engine = _engine(world, watch)
    _to_canary(world, engine)
    world.good_metrics("v2")
    calls = len(world.serving.calls)
    served_v1 = world.serving.running[("production", "iris", "v1")]
    world.serving.kill("production", "iris", "v1")  # behind the controller's back
    _tick(world, watch, engine, ticks=12, seconds=11)  # far past the 30 s step
    rollout = world.rollout(2)
    assert (rollout.state, rollout.step_index, rollout.analysis_failures) == ("canary", 0, 0)
    assert world.serving.calls[calls:] == []  # no deploy, no routing, no retire on top of it
    assert ("production", "iris", "v1") not in world.serving.running
    (audited,) = _audited(world, DISCREPANCY)
    assert audited["kind"] == "missing" and audited["version"] == "v1" and audited["holds_rollout"] == 2
    rounds = [e for e in world.store.audit(model="iris") if e.action == "analysis.round"]
    assert not [e for e in rounds if e.at > _at(world)]  # no round judged while it holds

    production = world.catalog.environments["production"]  # an operator brings it back
    world.serving.deploy(environment=production, version=served_v1)
    _tick(world, watch, engine, ticks=4, seconds=11)
    assert len(_audited(world, RECONCILED)) == 1
    assert world.rollout(2).step_index == 1  # it goes on by itself
    assert world.serving.traffic("production", "iris") == {"v2": 50, "v1": 50}


def _at(world: World) -> datetime:
    """When the last discrepancy was audited."""
    return max(e.at for e in world.store.audit(model="iris") if e.action == DISCREPANCY)


@pytest.mark.parametrize("metrics_down", [False, True], ids=["metrics-good", "metrics-down"])
def test_an_unreachable_router_holds_a_canary_and_never_rolls_it_back(
    world: World, metrics_down: bool
) -> None:
    watch = _watch(world)
    engine = _engine(world, watch)
    _to_canary(world, engine)
    world.good_metrics("v2")

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("prometheus is down")

    if metrics_down:
        world.metrics.measure = broken  # type: ignore[method-assign]
    world.serving.unreachable.add("production")
    _tick(world, watch, engine, ticks=12, seconds=11)
    rollout = world.rollout(2)
    assert (rollout.state, rollout.step_index, rollout.analysis_failures) == ("canary", 0, 0)
    assert world.serving.traffic("production", "iris") == {"v2": 20, "v1": 80}
    (audited,) = _audited(world, DISCREPANCY)
    assert audited["kind"] == "unknown" and audited["observed"] is None
    assert "does not answer" in str(audited["message"])

    outcome = world.commands().control(Actor("cli", "erin"), command="abort", model="iris", reason="router")
    assert outcome.ok, outcome.message
    _tick(world, watch, engine, ticks=3, seconds=1)
    assert world.rollout(2).state == "rolling_back"  # people can still end it; it waits for the router
    world.serving.unreachable.clear()
    _tick(world, watch, engine, ticks=3, seconds=1)
    assert world.rollout(2).state == "aborted"
    assert world.serving.traffic("production", "iris") == {"v1": 100}


def test_status_and_models_show_the_open_discrepancies(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    _first_to_production(world, world.engine())
    watch = _watch(world)
    world.serving.kill("production", "iris", "v1")
    watch.tick()
    monkeypatch.chdir(world.tmp)  # no repository here: main's specs are not read
    state = ["--state-dir", str(world.tmp / "state")]
    shown = CliRunner().invoke(main, ["status", "iris", *state])
    assert shown.exit_code == 0, shown.output
    assert "observed:" in shown.output and "iris v1 should take 100% of production" in shown.output
    listed = CliRunner().invoke(main, ["models", "--json", *state])
    assert listed.exit_code == 0, listed.output
    (iris,) = json.loads(listed.output)
    assert [(d["kind"], d["version"]) for d in iris["discrepancies"]] == [("missing", "v1")]

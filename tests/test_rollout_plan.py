"""Planning a rollout, with no backend at all: state and observations in, actions and the next state out.

Pins down every stage transition (deploy → canary or gate, canary step → step
→ gate, gate → promote, promote → next stage's deploy or succeeded, rolling
back → how it ended), every request in every phase (pause, resume, promote,
abort, rollback, superseded), what no data and too few requests mean (hold,
told once, never promote), the failure limit, approvals that expired or come
from outside the rule's groups, a failed deploy or routing, main losing the
model, the environment or the stage — and that the planner's modules import
nothing from the backends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from controller.backends.metrics import Measurement
from controller.engine.analysis import judge
from controller.engine.approvals import Decision
from controller.engine.rollout_actions import (
    Action,
    Audit,
    Deploy,
    Failure,
    Needs,
    Notify,
    Observations,
    Retire,
    RetireAllBut,
    RolloutPlan,
    Route,
    Save,
    SmokeTest,
)
from controller.engine.rollout_plan import needs, plan_rollout, plan_start
from controller.engine.rollout_state import (
    LastRound,
    Outcome,
    Pause,
    Release,
    Request,
    RequestKind,
    RolloutState,
    StepProgress,
    Stop,
)
from controller.engine.verdicts import Decision as RoundDecision
from controller.engine.verdicts import RoundVerdict, evaluate_round
from controller.specs.types import (
    Analysis,
    AnalysisCheck,
    ApprovalRule,
    CanaryStep,
    Catalog,
    Environment,
    Model,
    Policy,
    Rollout,
    Serving,
    Source,
    Stage,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SUCCESS = AnalysisCheck(name="success-rate", builtin="successRate", min=0.99)
TRAFFIC = AnalysisCheck(name="enough-traffic", builtin="requestCount", min=20)
ANALYSIS = Analysis(interval_seconds=10, failure_limit=2, checks=(SUCCESS, TRAFFIC))
PRODUCTION = Stage(
    "production", canary=(CanaryStep(20, 30), CanaryStep(50, 30)), approval="production-signoff"
)
MODEL = Model(
    name="iris",
    spec_path="specs/iris/model.yaml",
    source=Source("specs/iris", "requirements.txt"),
    serving=Serving(sample_inputs=((5.1, 3.5, 1.4, 0.2),)),
    rollout=Rollout(stages=(Stage("staging"), PRODUCTION), analysis=ANALYSIS),
)
POLICY = Policy(
    name="default",
    spec_path="policies/default.yaml",
    groups={"ml-engineers": ("alice", "bob"), "business-owners": ("carol", "dave")},
    approvals=(ApprovalRule("production-signoff", ("business-owners",), expires_after_seconds=3600),),
)
CATALOG = Catalog(
    models={"iris": MODEL},
    policies={"default": POLICY},
    environments={
        "staging": Environment("staging", "environments/staging.yaml"),
        "production": Environment("production", "environments/production.yaml", production=True),
    },
)
RELEASE = Release(author="alice", commit="c" * 40, run=7, metrics={"accuracy": 0.9})
BASE = RolloutState(model="iris", version=2, stages=("staging", "production"), release=RELEASE)


def at(phase: str, **changes: object) -> RolloutState:
    """v2 in production in ``phase`` (deploy: staging), v1 stable there; canary: step 0 routed 5 s ago."""
    state = replace(BASE, phase=phase, stage_index=0 if phase == "deploy" else 1, stable=1)
    if phase == "canary":
        state = replace(state, weight=20, canary=StepProgress(NOW - timedelta(seconds=5), routed=True))
    return replace(state, **changes)


def verdict(*, success: float | None = 1.0, requests: float = 100) -> RoundVerdict:
    ok = (
        Measurement(value=success, samples=int(requests))
        if success is not None
        else Measurement.missing("no requests in the window", samples=0)
    )
    return evaluate_round(ANALYSIS, [judge(SUCCESS, ok), judge(TRAFFIC, Measurement(value=requests))])


PASSED, NO_DATA, TOO_FEW, FAILED = (
    verdict(),
    verdict(success=None, requests=0),
    verdict(requests=3),
    verdict(success=0.7),
)
CONTINUE = LastRound(PASSED, RoundDecision("continue", PASSED.summary))


def request(kind: RequestKind, *, by: str = "bob", reason: str = "", **where: int) -> Request:
    return Request(id=f"{kind}-1", kind=kind, by=by, at=NOW - timedelta(seconds=1), reason=reason, **where)


def plan(state: RolloutState, **seen: object) -> RolloutPlan:
    return plan_rollout(state, Observations(**seen), catalog=CATALOG, now=NOW)


def of(plan: RolloutPlan, kind: type[Action]) -> list[Action]:
    return [a for a in plan.actions if isinstance(a, kind)]


def notices(plan: RolloutPlan) -> list[str]:
    return [a.kind for a in plan.actions if isinstance(a, Notify)]


def effects(plan: RolloutPlan) -> list[Action]:
    """The side effects on serving, in order."""
    return [a for a in plan.actions if isinstance(a, Deploy | SmokeTest | Route | Retire | RetireAllBut)]


@dataclass(frozen=True)
class Decided:
    """A recorded approval, as a plain record (the store's are alike)."""

    id: int
    user: str
    decision: Decision
    created_at: datetime
    expires_at: datetime | None = None
    model: str = "iris"
    version: int = 2
    environment: str = "production"

    def valid_at(self, when: datetime) -> bool:
        return self.expires_at is None or when < self.expires_at


# ------------------------------------------------------------ transitions


def test_a_first_deployment_deploys_smoke_tests_and_goes_to_the_gate() -> None:
    result = plan(replace(at("deploy"), stable=None), stable=None)
    assert effects(result) == [
        Deploy("staging", 2, failure="deploy to staging failed"),
        SmokeTest("staging", 2, ((5.1, 3.5, 1.4, 0.2),), failure="deploy to staging failed"),
    ]
    assert (result.state.phase, result.state.stable) == ("gate", None)
    audits = of(result, Audit)
    assert audits[0] == Audit("rollout.deployed", "staging", {"stable": None, "smoke_inputs": 1})
    assert audits[1].detail["canary"] == "skipped: first deployment here"
    # recorded with the transition, after its save: one transaction, never audited twice by a restart
    assert result.actions.index(of(result, Save)[0]) < result.actions.index(audits[0])


def test_a_deploy_next_to_a_serving_version_enters_the_first_canary_step_and_routes_it() -> None:
    state = at("deploy", stage_index=1, stable=None)
    result = plan(state, stable=1)
    assert effects(result)[2:] == [Route("production", {2: 20, 1: 80}, failure="could not route traffic")]
    saves = of(result, Save)
    assert [s.state.phase for s in saves] == ["canary", "canary"]
    entered, routed = (s.state for s in saves)  # the step is recorded before its traffic is routed
    assert entered.canary == StepProgress(NOW) and (entered.weight, entered.stable) == (20, 1)
    assert routed.canary is not None and routed.canary.routed
    assert (
        result.actions.index(saves[0])
        < result.actions.index(effects(result)[2])
        < result.actions.index(saves[1])
    )
    assert notices(result) == ["step_reached"]
    (step,) = of(result, Notify)
    assert step.step == 0 and step.detail["stable_version"] == 1 and step.detail["weight"] == 20


def test_a_deploy_without_canary_steps_goes_to_the_gate() -> None:
    catalog = replace(CATALOG, models={"iris": replace(MODEL, rollout=Rollout(stages=(Stage("staging"),)))})
    state = at("deploy", stages=("staging",))
    result = plan_rollout(state, Observations(stable=1), catalog=catalog, now=NOW)
    assert result.state.phase == "gate" and result.state.stable == 1
    assert of(result, Audit)[-1].detail["canary"] == "skipped: no canary steps"


@pytest.mark.parametrize("failed", ["deploy", "smoke"])
def test_a_failed_deploy_or_smoke_test_rolls_back_as_failed(failed: str) -> None:
    state = at("deploy", stage_index=1, stable=None)
    first = plan(state, stable=1)
    action = effects(first)[0 if failed == "deploy" else 1]
    assert isinstance(action, Deploy | SmokeTest)
    result = plan(state, stable=1, failure=Failure(action, "smoke test of v2 failed: 500"))
    assert effects(result) == []
    assert result.state.phase == "rolling_back" and result.state.stable == 1
    assert result.state.outcome == Outcome(
        "failed", "deploy to production failed: smoke test of v2 failed: 500"
    )


def test_a_canary_step_that_cannot_be_routed_rolls_back_as_failed() -> None:
    state = at("canary", canary=StepProgress(NOW, routed=False))
    (route,) = effects(plan(state))
    assert isinstance(route, Route)
    result = plan(state, failure=Failure(route, "router down"))
    assert result.state.phase == "rolling_back"
    assert result.state.outcome == Outcome("failed", "could not route traffic: router down")


def test_an_unrouted_step_is_routed_and_announced_once() -> None:
    state = at("canary", canary=StepProgress(NOW, routed=False))
    result = plan(state)
    assert effects(result) == [Route("production", {2: 20, 1: 80}, failure="could not route traffic")]
    assert notices(result) == ["step_reached"]
    assert plan(result.state).actions == ()  # routed: nothing more until a round is due


def test_a_passing_round_before_the_step_is_over_records_it_and_waits() -> None:
    result = plan(at("canary"), verdict=PASSED)
    (save,) = of(result, Save)
    assert save.state.last_round == CONTINUE and save.state.canary is not None
    assert (save.state.canary.last_round_at, save.state.canary.rounds) == (NOW, 1)
    assert of(result, Audit) == [
        Audit("analysis.round", "production", {"verdict": PASSED.to_json(), "decision": "continue"})
    ]
    assert result.state.step_index == 0 and notices(result) == []


def test_a_step_over_with_a_passing_round_goes_to_the_next_step() -> None:
    state = at("canary", canary=StepProgress(NOW - timedelta(seconds=31), routed=True, last_round_at=NOW))
    result = plan(replace(state, last_round=CONTINUE, analysis_failures=1))
    assert (result.state.step_index, result.state.weight, result.state.analysis_failures) == (1, 50, 1)
    assert effects(result) == [Route("production", {2: 50, 1: 50}, failure="could not route traffic")]
    transition = of(result, Audit)[0]
    assert transition.detail == {"from": "canary", "to": "canary", "step": 1, "weight": 50}


def test_the_last_step_over_goes_to_the_gate() -> None:
    state = at("canary", step_index=1, weight=50, last_round=CONTINUE)
    state = replace(state, canary=StepProgress(NOW - timedelta(seconds=31), routed=True, last_round_at=NOW))
    result = plan(state)
    assert result.state.phase == "gate" and result.state.canary is None
    assert of(result, Audit)[0].detail == {"from": "canary", "to": "gate", "step": 1, "promoted_by": None}


def test_no_round_is_taken_before_the_interval_and_the_engine_is_told_when_one_is_due() -> None:
    recent = at("canary", canary=StepProgress(NOW - timedelta(seconds=20), routed=True, last_round_at=NOW))
    assert needs(recent, CATALOG, now=NOW) == Needs(verdict=False)
    assert plan(recent, verdict=FAILED).actions == ()  # a verdict not asked for is not taken
    due = replace(recent, canary=replace(recent.canary, last_round_at=NOW - timedelta(seconds=10)))
    assert needs(due, CATALOG, now=NOW) == Needs(verdict=True)
    assert needs(at("deploy"), CATALOG, now=NOW) == Needs(stable=True)
    assert needs(at("gate"), CATALOG, now=NOW) == Needs(approvals=True)
    assert needs(at("rolling_back"), CATALOG, now=NOW) == Needs(deployed=True)
    assert needs(at("promote"), CATALOG, now=NOW) == Needs()


@pytest.mark.parametrize("round_", [NO_DATA, TOO_FEW], ids=["no data", "too few requests"])
def test_missing_evidence_holds_is_told_once_and_never_promotes(round_: RoundVerdict) -> None:
    state = at("canary", canary=StepProgress(NOW - timedelta(minutes=10), routed=True))
    first = plan(state, verdict=round_)
    assert round_.outcome == "inconclusive"
    assert first.state.last_round is not None and first.state.last_round.decision.action == "hold"
    assert (first.state.phase, first.state.step_index, first.state.analysis_failures) == ("canary", 0, 0)
    assert notices(first) == ["analysis_inconclusive"]
    later = replace(
        first.state, canary=replace(first.state.canary, last_round_at=NOW - timedelta(seconds=10))
    )
    second = plan(later, verdict=round_)
    assert notices(second) == [] and second.state.step_index == 0 and second.state.holding_rounds == 2
    passed = plan(replace(second.state, canary=replace(later.canary, last_round_at=None)), verdict=PASSED)
    assert passed.state.step_index == 1  # the step is long over: the first passing round moves it on
    again = plan(
        replace(passed.state, canary=StepProgress(NOW - timedelta(minutes=1), routed=True)), verdict=round_
    )
    assert [n.occurrence for n in of(again, Notify)] == [1]  # a new hold is told again, as a new occurrence


def test_failed_rounds_hold_below_the_limit_and_roll_back_at_it() -> None:
    state = at("canary", canary=StepProgress(NOW - timedelta(minutes=10), routed=True))
    first = plan(state, verdict=FAILED)
    assert (first.state.phase, first.state.analysis_failures) == ("canary", 1)
    assert [(n.kind, n.occurrence) for n in of(first, Notify)] == [("analysis_failed", 1)]
    good = plan(replace(first.state, canary=replace(first.state.canary, last_round_at=None)), verdict=PASSED)
    assert good.state.analysis_failures == 1  # a good round does not forgive the bad one
    bad = replace(first.state, canary=StepProgress(NOW - timedelta(seconds=5), routed=True))
    second = plan(bad, verdict=FAILED)
    assert second.state.phase == "rolling_back" and second.state.analysis_failures == 2
    assert second.state.outcome is not None and second.state.outcome.final == "rolled_back"
    assert "rolling back after 2 failed rounds (limit 2)" in second.state.outcome.reason
    assert [(n.kind, n.occurrence) for n in of(second, Notify)] == [("analysis_failed", 2)]


# ------------------------------------------------------------------- gate


def test_a_gate_without_a_rule_opens() -> None:
    catalog = replace(CATALOG, models={"iris": replace(MODEL, rollout=Rollout(stages=(Stage("staging"),)))})
    result = plan_rollout(
        at("gate", stage_index=0, stages=("staging",)), Observations(), catalog=catalog, now=NOW
    )
    assert result.state.phase == "promote" and notices(result) == []


def test_a_gate_whose_rule_is_not_on_main_waits_and_says_so() -> None:
    result = plan_rollout(at("gate"), Observations(), catalog=replace(CATALOG, policies={}), now=NOW)
    assert result.state == at("gate") and notices(result) == ["awaiting_approval"]
    assert "'production-signoff' is not in main's policies" in of(result, Notify)[0].message


GIVEN = NOW - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("approvals", "phase", "told"),
    [
        ((), "gate", "awaiting_approval"),
        ((Decided(1, "carol", "approve", GIVEN),), "promote", "approved"),
        ((Decided(1, "carol", "reject", GIVEN),), "rolling_back", "rejected"),
        ((Decided(1, "alice", "approve", GIVEN),), "gate", "awaiting_approval"),  # not a business owner
        (
            (Decided(1, "carol", "approve", GIVEN, expires_at=NOW),),
            "gate",
            "awaiting_approval",
        ),  # its own expiry
        (
            (Decided(1, "carol", "approve", NOW - timedelta(hours=1)),),
            "gate",
            "awaiting_approval",
        ),  # the rule's
        ((Decided(1, "carol", "approve", GIVEN, version=1),), "gate", "awaiting_approval"),  # another version
        ((Decided(1, "carol", "reject", GIVEN), Decided(2, "carol", "approve", NOW)), "promote", "approved"),
    ],
    ids=[
        "none",
        "approved",
        "rejected",
        "outsider",
        "expired",
        "expired-by-rule",
        "other-version",
        "changed-mind",
    ],
)
def test_the_gate_opens_only_on_live_approvals_of_the_rules_groups(
    approvals: tuple[Decided, ...], phase: str, told: str
) -> None:
    result = plan(at("gate"), approvals=approvals)
    assert result.state.phase == phase and notices(result) == [told]
    if phase == "rolling_back":
        assert result.state.outcome == Outcome("rejected", "iris v2 for production was rejected by carol.")
    if phase == "promote":
        assert of(result, Audit)[0].detail["approvers"] == ["carol"]


# -------------------------------------------------------- promote, roll back


def test_promote_routes_everything_retires_the_rest_and_deploys_the_next_stage() -> None:
    result = plan(at("promote", stage_index=0, weight=100, stable=None))
    assert effects(result) == [Route("staging", {2: 100}), RetireAllBut("staging", keep="v2")]
    assert notices(result) == ["promoted"]
    state = result.state
    assert (state.phase, state.environment, state.weight, state.stable, state.canary) == (
        "deploy",
        "production",
        0,
        None,
        None,
    )
    assert of(result, Audit)[0] == Audit(
        "rollout.transition",
        "production",
        {"from": "promote", "to": "deploy", "step": 0, "promoted_in": "staging"},
    )


def test_promote_in_the_last_stage_succeeds() -> None:
    result = plan(at("promote", weight=50))
    assert result.state.phase == "succeeded" and result.state.finished_at == NOW
    assert result.state.outcome == Outcome("succeeded", "v2 is in production")
    assert [a.action for a in of(result, Audit)] == ["rollout.promoted", "rollout.succeeded"]
    assert of(result, Notify)[0].detail["replaced"] == 1


@pytest.mark.parametrize(
    ("final", "deployed", "told"),
    [
        ("rolled_back", ("v1", "v2"), ["rolled_back"]),
        ("aborted", ("v2",), ["aborted"]),
        ("failed", ("v1", "v2"), ["rolled_back"]),
        ("rejected", ("v1", "v2"), []),
    ],
)
def test_rolling_back_restores_the_stable_version_and_ends(
    final: str, deployed: tuple[str, ...], told: list[str]
) -> None:
    state = at("rolling_back", outcome=Outcome(final, "why"))
    result = plan(state, deployed=deployed)
    expected: list[Action] = [] if "v1" in deployed else [Deploy("production", 1)]
    expected += [Route("production", {1: 100}), Retire("production", "v2")]
    assert effects(result) == expected
    assert notices(result) == told
    assert (result.state.phase, result.state.finished_at) == (final, NOW)


def test_rolling_back_without_a_stable_version_takes_the_new_one_out_of_traffic() -> None:
    result = plan(at("rolling_back", stable=None, outcome=Outcome("failed", "deploy failed")))
    assert effects(result) == [Route("production", {}), Retire("production", "v2")]
    assert of(result, Notify)[0].message == "deploy failed; the version gets no traffic."


# --------------------------------------------------------------- requests

ACTIVE = ["deploy", "canary", "gate", "promote"]


@pytest.mark.parametrize("phase", ACTIVE)
def test_a_pause_holds_every_phase_and_is_announced_once(phase: str) -> None:
    result = plan(at(phase), requests=(request("pause", reason="lunch"),), stable=1)
    assert effects(result) == [] and notices(result) == ["paused"]
    (save,) = of(result, Save)
    assert save.consumed == {"pause-1"} and save.state.phase == phase
    assert save.state.pause == Pause("bob", "lunch", NOW - timedelta(seconds=1), announced=True)
    assert plan(result.state, stable=1, verdict=PASSED).actions == ()  # held, and told once


def test_a_pause_does_not_hold_a_rollback() -> None:
    state = at("rolling_back", outcome=Outcome("aborted", "abort by erin"))
    result = plan(state, requests=(request("pause"),), deployed=("v1",))
    assert result.state.phase == "aborted" and result.state.pause is not None
    assert notices(result) == ["aborted"] and result.consumed == {"pause-1"}


@pytest.mark.parametrize("phase", ACTIVE)
def test_a_resume_lets_the_phase_go_on_as_if_never_paused(phase: str) -> None:
    paused = at(phase, pause=Pause("bob", announced=True), pauses_announced=1)
    result = plan(paused, requests=(request("resume"),), stable=1, approvals=(), verdict=PASSED)
    unpaused = plan(at(phase, pauses_announced=1), stable=1, approvals=(), verdict=PASSED)
    assert result.state == unpaused.state and result.consumed == {"resume-1"}
    assert effects(result) == effects(unpaused) and notices(result) == notices(unpaused)
    assert effects(result) or notices(result) or phase == "canary"  # every phase but a waiting step acts
    not_paused = plan(at(phase), requests=(request("resume"),), stable=1, verdict=PASSED)
    assert not_paused.consumed == {"resume-1"} and not_paused.state.pause is None


@pytest.mark.parametrize("phase", ACTIVE)
@pytest.mark.parametrize(
    ("kind", "final"), [("abort", "aborted"), ("rollback", "rolled_back"), ("superseded", "aborted")]
)
def test_a_stop_rolls_back_from_every_phase(phase: str, kind: RequestKind, final: str) -> None:
    paused = at(phase, pause=Pause("bob", announced=True))  # a stop is carried out even when paused
    promote = request("promote", stage=1, step=0)  # waiting for its step: pointless once it rolls back
    result = plan(paused, requests=(promote, request(kind, by="erin", reason="bad data")), stable=1)
    assert effects(result) == []
    (save,) = of(result, Save)
    assert save.consumed == {f"{kind}-1", "promote-1"} and save.state.phase == "rolling_back"
    assert save.state.outcome == Outcome(final, f"{kind} by erin: bad data")
    assert save.state.stop is None
    assert of(result, Audit)[0].detail["final"] == final


@pytest.mark.parametrize("kind", ["abort", "rollback", "superseded"])
def test_a_stop_while_rolling_back_changes_nothing(kind: RequestKind) -> None:
    state = at("rolling_back", outcome=Outcome("rolled_back", "analysis"))
    result = plan(state, requests=(request(kind),), deployed=("v1", "v2"))
    assert result.state.outcome == Outcome("rolled_back", "analysis") and result.consumed == {f"{kind}-1"}


def test_promote_skips_the_rest_of_the_step_it_was_asked_in() -> None:
    state = at("canary", last_round=LastRound(NO_DATA, RoundDecision("hold", "no data")))
    asked = request("promote", stage=1, step=0)
    result = plan(state, requests=(asked,))
    assert (result.state.step_index, result.state.weight) == (1, 50)
    assert of(result, Save)[0].consumed == {"promote-1"}
    last = replace(state, step_index=1, weight=50)
    done = plan(last, requests=(request("promote", by="alice", stage=1, step=1),))
    assert done.state.phase == "gate" and of(done, Audit)[0].detail["promoted_by"] == "alice"


@pytest.mark.parametrize(
    ("phase", "where", "asked"),
    [
        ("canary", {"stage": 1, "step": 1}, NOW),  # asked at another step
        ("canary", {"stage": 1, "step": 0}, NOW - timedelta(minutes=1)),  # before this step began
        ("canary", {"stage": 0, "step": 0}, NOW),  # in another stage
        ("deploy", {"stage": 1, "step": 0}, NOW),
        ("gate", {"stage": 1, "step": 1}, NOW),
        ("promote", {"stage": 1, "step": 1}, NOW),
    ],
)
def test_promote_passes_nothing_but_the_canary_step_it_was_asked_in(
    phase: str, where: dict[str, int], asked: datetime
) -> None:
    state = at(phase, stage_index=1, stable=None)
    promote = replace(request("promote", **where), at=asked)
    result = plan(state, requests=(promote,), stable=1)
    without = plan(state, stable=1)
    assert result.state == without.state
    assert effects(result) == effects(without) and notices(result) == notices(without)


def test_a_promote_waiting_for_its_step_is_dropped_when_the_next_step_begins() -> None:
    state = at("canary", last_round=CONTINUE, canary=StepProgress(NOW - timedelta(seconds=31), routed=True))
    stale = request("promote", stage=1, step=1)  # asked for the step after: never applied here
    result = plan(state, requests=(stale,))
    assert result.state.step_index == 1 and result.consumed == {"promote-1"}
    assert (
        plan(replace(state, canary=StepProgress(NOW, routed=True)), requests=(stale,)).consumed == frozenset()
    )


# ------------------------------------------------------------ main changed


def test_a_model_gone_from_main_is_stopped_once_it_comes_back() -> None:
    result = plan_rollout(at("canary"), Observations(), catalog=replace(CATALOG, models={}), now=NOW)
    (save,) = of(result, Save)
    assert save.state.stop == Stop("abort", "flywheel", "iris is no longer on main", NOW)
    assert (
        plan_rollout(save.state, Observations(), catalog=replace(CATALOG, models={}), now=NOW).actions == ()
    )
    back = plan(save.state)
    assert back.state.phase == "rolling_back"
    assert back.state.outcome == Outcome("aborted", "abort by flywheel: iris is no longer on main")


def test_an_environment_gone_from_main_ends_the_rollout_aborted() -> None:
    catalog = replace(CATALOG, environments={"staging": CATALOG.environments["staging"]})
    result = plan_rollout(at("canary"), Observations(), catalog=catalog, now=NOW)
    assert result.state.phase == "aborted" and effects(result) == []
    assert result.state.outcome == Outcome("aborted", "environment 'production' is not defined on main")


def test_a_stage_gone_from_main_is_undone_there() -> None:
    model = replace(MODEL, rollout=Rollout(stages=(Stage("staging"),), analysis=ANALYSIS))
    catalog = replace(CATALOG, models={"iris": model})
    result = plan_rollout(at("canary"), Observations(), catalog=catalog, now=NOW)
    assert result.state.phase == "rolling_back" and result.state.outcome is not None
    assert result.state.outcome.reason == "production is no longer a stage of iris's rollout on main"
    back = plan_rollout(result.state, Observations(deployed=("v1",)), catalog=catalog, now=NOW)
    assert back.state.phase == "aborted" and effects(back)[-1] == Retire("production", "v2")


def test_an_ended_rollout_plans_nothing() -> None:
    ended = at("succeeded", finished_at=NOW)
    assert plan(ended, requests=(request("abort"),)).actions == ()


# ------------------------------------------------------------------ start


def _audits_follow_saves(result: RolloutPlan) -> bool:
    """Whether every audit entry is in the records right after a save (the applier writes a save and the
    audit entries and notices after it in one transaction)."""
    grouped = False
    for action in result.actions:
        if isinstance(action, Save):
            grouped = True
        elif isinstance(action, Audit) and not grouped:
            return False
        elif not isinstance(action, Audit | Notify):
            grouped = False
    return True


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(lambda: plan(replace(at("deploy"), stable=None), stable=None), id="first-deploy"),
        pytest.param(lambda: plan(at("deploy", stage_index=1, stable=None), stable=1), id="deploy-to-canary"),
        pytest.param(
            lambda: plan(
                at("canary", canary=StepProgress(NOW - timedelta(seconds=31), routed=True)),
                stable=1,
                verdict=PASSED,
            ),
            id="step-over",
        ),
        pytest.param(lambda: plan(at("canary", analysis_failures=1), stable=1, verdict=FAILED), id="fails"),
        pytest.param(lambda: plan(at("promote", stage_index=0, weight=100, stable=None)), id="promote-mid"),
        pytest.param(lambda: plan(at("promote", weight=50)), id="promote-last"),
        pytest.param(
            lambda: plan(at("rolling_back", outcome=Outcome("failed", "why")), deployed=("v1", "v2")),
            id="rolled-back",
        ),
        pytest.param(lambda: plan_start(BASE, created=True, now=NOW), id="start"),
    ],
)
def test_every_audit_entry_is_written_with_a_save(scenario: Callable[[], RolloutPlan]) -> None:
    result = scenario()
    assert of(result, Audit), "the scenario audits something"
    assert _audits_follow_saves(result), [type(a).__name__ for a in result.actions]


def test_a_new_rollout_is_recorded_and_announced_once() -> None:
    result = plan_start(BASE, created=True, now=NOW)
    assert result.state.started_at == NOW
    assert of(result, Audit) == [
        Audit("rollout.started", "staging", {"stages": ["staging", "production"], "author": "alice"})
    ]
    assert notices(result) == ["rollout_started"]
    assert plan_start(result.state, created=True, now=NOW).actions == ()
    assert plan_start(BASE, created=False, now=NOW).actions == ()


def test_notifications_carry_what_ships_and_what_it_replaces() -> None:
    (started,) = of(plan_start(BASE, created=True, now=NOW), Notify)
    assert started.detail == {
        "stage": "staging",
        "weight": 0,
        "metrics": {"accuracy": 0.9},
        "commit": "c" * 40,
        "run": 7,
        "stages": ["staging", "production"],
    }


def test_the_planner_modules_import_nothing_from_the_backends() -> None:
    modules = [
        "controller.engine.rollout_state",
        "controller.engine.rollout_actions",
        "controller.engine.rollout_plan",
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.startswith('controller.backends')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

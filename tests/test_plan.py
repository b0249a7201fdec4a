"""Planning a proposal head: start, reuse on a cache hit, cancel the superseded, resume the orphaned,
report a bad spec without blocking the other models, and judge a finished run again (never train it
again) when production has moved on since it was compared; an untrusted head runs nothing and is told so
once. Planning the release branch: a model's content runs once there, a judged run left without its
version is released, one left queued by a stopped controller is resumed. Starting queued runs: oldest
first up to the limit, a moved-on proposal's dropped, a missing runner an error that takes no room. All
without backends."""

from __future__ import annotations

import pytest

from controller.engine.plan import (
    CancelRun,
    DropQueued,
    FailToStart,
    HoldHead,
    LaunchRun,
    ModelHead,
    PriorRun,
    QueuedRun,
    Rejudge,
    Release,
    ReportSpecErrors,
    ResumeRun,
    ReuseRun,
    StartRun,
    Trust,
    plan_closed,
    plan_launches,
    plan_proposal,
    plan_release,
)
from controller.specs.types import Gate, Location, Model, Source, SpecError

pytestmark = pytest.mark.unit
MODEL = Model(name="iris", spec_path="specs/iris/model.yaml", source=Source("specs/iris", "r.txt"))
ERROR = SpecError(Location("specs/bad/model.yaml", 3, 5), "spec.params", "expected an object, got 'x'")


def _run(status: str, *, commit: str = "c1", key: str = "k1", run_id: int = 1) -> PriorRun:
    return PriorRun(id=run_id, model="iris", commit=commit, cache_key=key, status=status)


def test_new_model_on_a_proposal_starts_a_run() -> None:
    actions = plan_proposal(ref="b", commit="c2", heads=[ModelHead("iris", MODEL, cache_key="k2")])
    assert actions == [StartRun("iris", "b", "c2", "k2")]


def test_a_head_already_planned_needs_nothing() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_run("running", commit="c1"))
    assert plan_proposal(ref="b", commit="c1", heads=[head], running_here={1}) == []


def test_a_run_orphaned_by_a_restart_is_resumed() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_run("running", commit="c1"))
    assert plan_proposal(ref="b", commit="c1", heads=[head]) == [ResumeRun(1, "iris", "b", "c1")]


def test_newer_head_cancels_the_older_run_and_starts_its_own() -> None:
    head = ModelHead("iris", MODEL, cache_key="k2", latest=_run("running", commit="c1"))
    actions = plan_proposal(ref="b", commit="c2", heads=[head], running_here={1})
    assert actions == [CancelRun(1, "iris", "superseded by c2"), StartRun("iris", "b", "c2", "k2")]


def test_unchanged_inputs_reuse_the_earlier_result() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_run("succeeded", commit="c1"))
    assert plan_proposal(ref="b", commit="c2", heads=[head]) == [ReuseRun("iris", "b", "c2", "k1", 1)]


def test_a_failed_run_with_the_same_key_is_not_reused() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_run("error", commit="c1"))
    assert plan_proposal(ref="b", commit="c2", heads=[head]) == [StartRun("iris", "b", "c2", "k1")]


def test_a_successful_run_elsewhere_is_reused() -> None:
    other = PriorRun(id=9, model="iris", commit="x", cache_key="k2", status="succeeded")
    head = ModelHead("iris", MODEL, cache_key="k2", reusable=other)
    assert plan_proposal(ref="b", commit="c2", heads=[head]) == [ReuseRun("iris", "b", "c2", "k2", 9)]


def test_bad_spec_blocks_only_its_model() -> None:
    heads = [ModelHead("bad", None, errors=(ERROR,)), ModelHead("iris", MODEL, cache_key="k2")]
    actions = plan_proposal(ref="b", commit="c2", heads=heads)
    assert actions == [ReportSpecErrors("bad", "b", "c2", (ERROR,)), StartRun("iris", "b", "c2", "k2")]


def test_closing_a_proposal_cancels_only_active_runs() -> None:
    runs = [_run("running", run_id=1), _run("succeeded", run_id=2), _run("queued", run_id=3)]
    assert plan_closed(ref="b", runs=runs) == [
        CancelRun(1, "iris", "proposal b closed"),
        CancelRun(3, "iris", "proposal b closed"),
    ]


def _judged(status: str, compared_with: int | None) -> PriorRun:
    return PriorRun(1, "iris", "c1", "k1", status, compared_with=compared_with)


def test_a_finished_head_compared_with_another_production_is_judged_again() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", 1), production=2)
    assert plan_proposal(ref="b", commit="c1", heads=[head]) == [Rejudge(1, "iris", "b", "c1", 2)]
    gone = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", 1), production=None)
    assert plan_proposal(ref="b", commit="c1", heads=[gone]) == [Rejudge(1, "iris", "b", "c1", None)]
    first = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", None), production=1)
    assert plan_proposal(ref="b", commit="c1", heads=[first]) == [Rejudge(1, "iris", "b", "c1", 1)]


def test_a_finished_head_compared_with_production_as_it_is_needs_nothing() -> None:
    head = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", 2), production=2)
    assert plan_proposal(ref="b", commit="c1", heads=[head]) == []
    never = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", None), production=None)
    assert plan_proposal(ref="b", commit="c1", heads=[never]) == []


def test_only_succeeded_runs_of_the_head_on_a_proposal_are_judged_again() -> None:
    for status in ("error", "failed", "cancelled", "queued"):
        head = ModelHead("iris", MODEL, cache_key="k1", latest=_judged(status, 1), production=2)
        assert not any(isinstance(a, Rejudge) for a in plan_proposal(ref="b", commit="c1", heads=[head]))
    older = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", 1), production=2)
    assert plan_proposal(ref="b", commit="c2", heads=[older]) == [ReuseRun("iris", "b", "c2", "k1", 1)]
    release = ModelHead("iris", MODEL, cache_key="k1", latest=_judged("succeeded", 1), production=None)
    assert plan_proposal(ref="main", commit="c1", heads=[release], compare=False) == []


# ------------------------------------------------------------------ trust


def test_an_untrusted_head_runs_nothing_and_is_held_once() -> None:
    heads = [ModelHead("iris", MODEL, cache_key="k2"), ModelHead("bad", None, errors=(ERROR,))]
    refused = Trust(False, "waits for /flywheel ok-to-test")
    assert plan_proposal(ref="b", commit="c2", heads=heads, trust=refused) == [
        HoldHead("b", "c2", ("iris", "bad"), "waits for /flywheel ok-to-test")
    ]
    told = Trust(False, "waits for /flywheel ok-to-test", told=True)
    assert plan_proposal(ref="b", commit="c2", heads=heads, trust=told) == []
    assert plan_proposal(ref="b", commit="c2", heads=[], trust=refused) == []  # changes nothing: no status
    admitted = plan_proposal(ref="b", commit="c2", heads=heads, trust=Trust(True))
    assert admitted == plan_proposal(ref="b", commit="c2", heads=heads)


# ---------------------------------------------------------------- release

GATED = Model(
    name="iris",
    spec_path="specs/iris/model.yaml",
    source=Source("specs/iris", "r.txt"),
    gates=(Gate(metric="accuracy", min=0.8),),
)


def _main(status: str, *, commit: str = "m1", key: str = "k1", **more: object) -> PriorRun:
    return PriorRun(1, "iris", commit, key, status, **more)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("latest", "model", "running", "actions"),
    [
        (None, MODEL, (), [StartRun("iris", "main", "m1", "k1")]),
        (_main("succeeded", gates=("passed",)), GATED, (), [Release(1, "iris")]),
        (_main("succeeded", commit="m0"), MODEL, (), [Release(1, "iris")]),  # no gates to judge
        (_main("succeeded", gates=("passed",), registered=True), GATED, (), []),
        (_main("succeeded", gates=("passed", "failed")), GATED, (), []),
        (_main("succeeded"), GATED, (), []),  # not judged yet: judged when collected
        (_main("failed"), MODEL, (), []),  # the same content failed: not trained again by itself
        (_main("running"), MODEL, (1,), []),
        (_main("running", commit="m0"), MODEL, (), [ResumeRun(1, "iris", "main", "m0")]),
        (_main("queued"), MODEL, (), [ResumeRun(1, "iris", "main", "m1")]),
        (_main("succeeded", commit="m0", key="k0"), MODEL, (), [StartRun("iris", "main", "m1", "k1")]),
        (
            _main("running", commit="m0", key="k0"),
            MODEL,
            (1,),
            [CancelRun(1, "iris", "superseded by m1"), StartRun("iris", "main", "m1", "k1")],
        ),
    ],
    ids=[
        "first",
        "judged-and-passed",
        "no-gates",
        "registered",
        "gate-failed",
        "not-judged",
        "failed",
        "running-here",
        "orphaned-older-commit",
        "orphaned",
        "new-content",
        "new-content-while-running",
    ],
)
def test_every_model_on_main_gets_one_run_of_its_content_and_a_version_of_it(
    latest: PriorRun | None, model: Model, running: tuple[int, ...], actions: list[object]
) -> None:
    head = ModelHead("iris", model, cache_key="k1", latest=latest)
    assert plan_release(ref="main", commit="m1", heads=[head], running_here=running) == actions


def test_on_main_a_cache_hit_of_a_reviewed_run_ships_what_was_reviewed() -> None:
    reviewed = PriorRun(7, "iris", "p1", "k1", "succeeded")
    head = ModelHead("iris", MODEL, cache_key="k1", reusable=reviewed)
    assert plan_release(ref="main", commit="m1", heads=[head]) == [ReuseRun("iris", "main", "m1", "k1", 7)]


# -------------------------------------------------------------- launching


def _queued(run_id: int, ref: str = "b", commit: str = "c1", **more: object) -> QueuedRun:
    return QueuedRun(run_id, "iris", ref, commit, **more)  # type: ignore[arg-type]


def test_queued_runs_start_oldest_first_while_there_is_room() -> None:
    queued = [_queued(3), _queued(1), _queued(2, ref="main", commit="m0")]
    heads = {"b": "c1", "main": "m1"}
    actions = plan_launches(queued=queued, heads=heads, release_branch="main", running=(), limit=2)
    assert actions == [LaunchRun(1, "iris", "b", "c1"), LaunchRun(2, "iris", "main", "m0")]
    assert plan_launches(queued=queued, heads=heads, release_branch="main", running=(9, 8), limit=2) == []
    assert plan_launches(queued=queued, heads=heads, release_branch="main", running=(1,), limit=2) == [
        LaunchRun(2, "iris", "main", "m0")
    ]


@pytest.mark.parametrize(
    ("queued", "actions"),
    [
        ([_queued(1, commit="c0"), _queued(2)], [DropQueued(1, "the proposal moved on before it ran")]),
        ([_queued(1, ref="gone"), _queued(2)], [DropQueued(1, "the proposal moved on before it ran")]),
        ([_queued(1, found=False), _queued(2)], []),
        ([_queued(1, runner_error="no argo here"), _queued(2)], [FailToStart(1, "iris", "no argo here")]),
    ],
    ids=["moved-on", "branch-gone", "model-gone", "runner-missing"],
)
def test_a_queued_run_that_cannot_start_takes_no_room(queued: list[QueuedRun], actions: list[object]) -> None:
    planned = plan_launches(queued=queued, heads={"b": "c1"}, release_branch="main", running=(), limit=1)
    assert planned == [*actions, LaunchRun(2, "iris", "b", "c1")]

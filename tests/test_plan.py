"""Planning a proposal head: start, reuse on a cache hit, cancel the superseded, resume the orphaned,
report a bad spec without blocking the other models, and judge a finished run again (never train it
again) when production has moved on since it was compared."""

from __future__ import annotations

from controller.engine.plan import (
    CancelRun,
    ModelHead,
    PriorRun,
    Rejudge,
    ReportSpecErrors,
    ResumeRun,
    ReuseRun,
    StartRun,
    plan_closed,
    plan_proposal,
)
from controller.specs.types import Location, Model, Source, SpecError

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

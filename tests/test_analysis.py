"""Canary analysis decides continue / hold / rollback, and never promotes on missing data.

Pins down Invariant 4 at the level of the pure engine functions:

- a value inside the bounds passes, outside fails with a sentence saying by how much;
- no value is inconclusive with the source's reason, and so is too little traffic;
- with ``noData: inconclusive`` missing data holds the rollout: it never counts
  as a failure and never as a pass, however many rounds it lasts;
- with ``noData: fail`` missing data counts as a failed check;
- a round passes only when every configured check passed (a check that was
  not measured at all is missing data);
- the request count comes first: fewer requests than the ``requestCount``
  check asks for is inconclusive, whatever the other checks say and whatever
  ``noData`` says; only with enough requests are the other checks judged;
- failed rounds are counted in total, not consecutively; reaching
  ``failureLimit`` rolls back, and a failed round below it holds.

The scripted ``FakeMetrics`` source drives a few whole analysis runs.
"""

from __future__ import annotations

import pytest

from controller.backends.metrics import Measurement
from controller.backends.metrics.fake import NOT_SCRIPTED, FakeMetrics
from controller.engine.analysis import judge, judge_round
from controller.engine.verdicts import AnalysisRun, CheckResult, RoundVerdict, evaluate_round, next_state
from controller.specs.types import Analysis, AnalysisCheck

pytestmark = pytest.mark.unit
SUCCESS = AnalysisCheck(name="success-rate", builtin="successRate", min=0.99)
LATENCY = AnalysisCheck(name="latency-p99", builtin="latency", percentile=99, max=0.5)
TRAFFIC = AnalysisCheck(name="enough-traffic", builtin="requestCount", min=20)
CHECKS = (SUCCESS, LATENCY, TRAFFIC)


def analysis(no_data: str = "inconclusive", failure_limit: int = 2) -> Analysis:
    return Analysis(interval_seconds=10, failure_limit=failure_limit, no_data=no_data, checks=CHECKS)  # type: ignore[arg-type]


def good() -> dict[str, Measurement]:
    return {
        "success-rate": Measurement(0.999, samples=1000),
        "latency-p99": Measurement(0.12, samples=1000),
        "enough-traffic": Measurement(1000.0, samples=1000),
    }


# ------------------------------------------------------------------ judge


def test_value_inside_bounds_passes() -> None:
    result = judge(SUCCESS, Measurement(0.995, samples=200))
    assert result.outcome == "passed"
    assert result.message == "success-rate = 0.995 (≥ 0.99)"
    assert (result.value, result.samples, result.rule) == (0.995, 200, "≥ 0.99")


def test_value_on_the_bound_passes() -> None:
    assert judge(SUCCESS, Measurement(0.99)).outcome == "passed"
    assert judge(LATENCY, Measurement(0.5)).outcome == "passed"


def test_value_below_min_fails_with_a_sentence() -> None:
    result = judge(SUCCESS, Measurement(0.93, samples=100))
    assert result.outcome == "failed"
    assert result.message == "success-rate = 0.93, needs ≥ 0.99"


def test_value_above_max_fails() -> None:
    result = judge(LATENCY, Measurement(0.81))
    assert result.outcome == "failed"
    assert result.message == "latency-p99 = 0.81, needs ≤ 0.5"


def test_both_bounds() -> None:
    check = AnalysisCheck(name="ratio", query="x", min=0.1, max=0.5)
    assert judge(check, Measurement(0.3)).outcome == "passed"
    assert judge(check, Measurement(0.05)).message == "ratio = 0.05, needs between 0.1 and 0.5"
    assert judge(check, Measurement(0.7)).outcome == "failed"


def test_a_near_miss_is_shown_with_enough_digits_to_see_it() -> None:
    check = AnalysisCheck(name="success-rate", builtin="successRate", min=0.9995)
    assert judge(check, Measurement(0.99949)).message == "success-rate = 0.99949, needs ≥ 0.9995"


def test_no_value_is_inconclusive_with_the_reason() -> None:
    result = judge(SUCCESS, Measurement.missing("no requests in the window", samples=0))
    assert result.outcome == "inconclusive"
    assert result.value is None
    assert "no requests in the window" in result.message


def test_too_few_samples_is_inconclusive() -> None:
    result = judge(SUCCESS, Measurement(1.0, samples=3), min_samples=10)
    assert result.outcome == "inconclusive"
    assert "only 3 requests" in result.message
    assert judge(SUCCESS, Measurement(1.0, samples=10), min_samples=10).outcome == "passed"
    assert judge(SUCCESS, Measurement(1.0, samples=None), min_samples=10).outcome == "passed"


def test_a_measurement_cannot_hide_missing_data() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Measurement(float("nan"))
    with pytest.raises(ValueError, match="reason"):
        Measurement(None)


# ------------------------------------------------------------- one round


def test_round_passes_only_when_every_check_passed() -> None:
    verdict = judge_round(analysis(), good())
    assert verdict.outcome == "passed"
    assert [r.outcome for r in verdict.results] == ["passed"] * 3


def test_any_failed_check_fails_the_round_even_beside_missing_data() -> None:
    measurements = good() | {
        "success-rate": Measurement(0.9),
        "latency-p99": Measurement.missing("query returned no series"),
    }
    verdict = judge_round(analysis(), measurements)
    assert verdict.outcome == "failed"
    assert verdict.summary == "success-rate = 0.9, needs ≥ 0.99"


def test_missing_data_makes_the_round_inconclusive_not_passed() -> None:
    measurements = good() | {"latency-p99": Measurement.missing("Prometheus unreachable at http://x")}
    verdict = judge_round(analysis(), measurements)
    assert verdict.outcome == "inconclusive"
    assert "Prometheus unreachable" in verdict.summary


def test_a_check_never_measured_is_missing_data() -> None:
    measurements = good()
    del measurements["enough-traffic"]
    verdict = judge_round(analysis(), measurements)
    assert verdict.outcome == "inconclusive"
    assert verdict.summary == "enough-traffic: not measured"
    assert evaluate_round(analysis(), []).outcome == "inconclusive"


def test_no_data_fail_counts_missing_data_as_a_failed_check() -> None:
    measurements = good() | {"latency-p99": Measurement.missing("no requests in the window")}
    verdict = judge_round(analysis(no_data="fail"), measurements)
    assert verdict.outcome == "failed"
    assert "no requests in the window" in verdict.summary
    assert "noData is fail" in verdict.summary


def test_an_analysis_without_checks_passes() -> None:
    verdict = evaluate_round(Analysis(checks=()), [])
    assert verdict.outcome == "passed"
    assert verdict.summary == "no analysis checks configured"


def test_verdicts_serialise_for_the_audit_log() -> None:
    data = judge_round(analysis(), good()).to_json()
    assert data["outcome"] == "passed"
    results = data["results"]
    assert isinstance(results, list)
    assert results[0] == {
        "check": "success-rate",
        "rule": "≥ 0.99",
        "outcome": "passed",
        "value": 0.999,
        "samples": 1000,
        "message": "success-rate = 0.999 (≥ 0.99)",
    }


# ------------------------------------------------- the request count first

FEW = Measurement(2.0, samples=2)  # below TRAFFIC's 20
ENOUGH = Measurement(20.0, samples=20)  # on the bound
NONE_SEEN = Measurement.missing("no requests in the window", samples=0)
UNKNOWN = Measurement.missing("Prometheus unreachable at http://x")
BAD_SUCCESS = Measurement(0.5, samples=2)
SLOW = Measurement(0.9, samples=2)


@pytest.mark.parametrize(
    ("traffic", "others", "no_data", "outcome"),
    [
        (FEW, {"success-rate": BAD_SUCCESS}, "inconclusive", "inconclusive"),
        (FEW, {"success-rate": BAD_SUCCESS}, "fail", "inconclusive"),  # too few is not missing data
        (FEW, {"success-rate": BAD_SUCCESS, "latency-p99": SLOW}, "inconclusive", "inconclusive"),
        (FEW, {}, "inconclusive", "inconclusive"),  # everything else fine: still no pass
        (FEW, {"latency-p99": UNKNOWN}, "fail", "inconclusive"),
        (NONE_SEEN, {"success-rate": Measurement.missing("no requests", samples=0)}, "fail", "inconclusive"),
        (ENOUGH, {"success-rate": BAD_SUCCESS}, "inconclusive", "failed"),
        (ENOUGH, {"success-rate": BAD_SUCCESS}, "fail", "failed"),
        (ENOUGH, {}, "inconclusive", "passed"),
        (ENOUGH, {"latency-p99": UNKNOWN}, "inconclusive", "inconclusive"),
        (ENOUGH, {"latency-p99": UNKNOWN}, "fail", "failed"),
        (UNKNOWN, {"success-rate": BAD_SUCCESS}, "inconclusive", "inconclusive"),  # enough? nobody knows
        (UNKNOWN, {"success-rate": BAD_SUCCESS}, "fail", "failed"),  # missing data counts as failed
        (UNKNOWN, {}, "fail", "failed"),
    ],
)
def test_the_request_count_decides_whether_the_other_checks_are_judged(
    traffic: Measurement, others: dict[str, Measurement], no_data: str, outcome: str
) -> None:
    verdict = judge_round(analysis(no_data=no_data), good() | {"enough-traffic": traffic} | others)
    assert verdict.outcome == outcome, verdict.summary


def test_too_few_requests_says_so_and_judges_nothing_else() -> None:
    measurements = good() | {"enough-traffic": FEW, "success-rate": BAD_SUCCESS}
    verdict = judge_round(analysis(no_data="fail"), measurements)
    assert verdict.outcome == "inconclusive"
    assert verdict.summary == "enough-traffic: only 2 requests in the window, needs at least 20 to judge"
    by_name = {r.check: r for r in verdict.results}
    assert {r.outcome for r in verdict.results} == {"inconclusive"}
    assert by_name["success-rate"].message == "success-rate = 0.5, needs ≥ 0.99 (not judged)"
    assert by_name["success-rate"].value == 0.5  # what was seen is kept for people to read
    _, decision = next_state(1, verdict, analysis(failure_limit=2))
    assert decision.action == "hold"  # never counted towards the failure limit


def test_without_a_request_count_check_the_other_checks_are_judged() -> None:
    spec = Analysis(interval_seconds=10, failure_limit=2, checks=(SUCCESS, LATENCY))
    verdict = judge_round(spec, {"success-rate": BAD_SUCCESS, "latency-p99": Measurement(0.1)})
    assert verdict.outcome == "failed"


def test_a_request_count_without_a_minimum_is_an_ordinary_check() -> None:
    capped = AnalysisCheck(name="not-flooded", builtin="requestCount", max=1000)
    spec = Analysis(interval_seconds=10, failure_limit=2, checks=(SUCCESS, capped))
    verdict = judge_round(spec, {"success-rate": BAD_SUCCESS, "not-flooded": FEW})
    assert verdict.outcome == "failed"


def test_a_failing_canary_waits_for_enough_requests_then_rolls_back() -> None:
    source = FakeMetrics()
    script_good(source)
    source.set("enough-traffic", "v2", FEW, Measurement(40.0, samples=40), Measurement(60.0, samples=60))
    source.set("success-rate", "v2", BAD_SUCCESS, Measurement(0.5, samples=40), Measurement(0.5, samples=60))
    history = run_rounds(source, analysis(failure_limit=2), rounds=10)
    assert [run.last.outcome for run in history if run.last] == ["inconclusive", "failed", "failed"]
    assert history[-1].rolled_back and history[-1].failures == 2


# ------------------------------------------------------- decision table


def verdict(outcome: str) -> RoundVerdict:
    result = CheckResult("c", "≥ 1", outcome, None, None, f"c was {outcome}")  # type: ignore[arg-type]
    return RoundVerdict(outcome, (result,), f"c was {outcome}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failures", "outcome", "limit", "expected"),
    [
        (0, "passed", 2, (0, "continue")),
        (1, "passed", 2, (1, "continue")),  # total, not consecutive: a good round forgives nothing
        (0, "inconclusive", 2, (0, "hold")),
        (1, "inconclusive", 2, (1, "hold")),  # missing data never counts as a failure
        (0, "failed", 2, (1, "hold")),  # below the limit: hold, do not advance
        (1, "failed", 2, (2, "rollback")),  # the limit is reached
        (0, "failed", 1, (1, "rollback")),
    ],
)
def test_decision_table(failures: int, outcome: str, limit: int, expected: tuple[int, str]) -> None:
    count, decision = next_state(failures, verdict(outcome), analysis(failure_limit=limit))
    assert (count, decision.action) == expected
    assert f"c was {outcome}" in decision.reason


def test_hold_says_why() -> None:
    _, decision = next_state(0, verdict("inconclusive"), analysis())
    assert decision.reason.startswith("holding, analysis is inconclusive (no data is not a pass)")
    _, decision = next_state(1, verdict("failed"), analysis())
    assert decision.reason.startswith("rolling back after 2 failed rounds (limit 2)")


# ------------------------------------------------------ whole analysis runs


def run_rounds(source: FakeMetrics, spec: Analysis, rounds: int) -> list[AnalysisRun]:
    run, history = AnalysisRun(), []
    for _ in range(rounds):
        measurements = {
            check.name: source.measure(
                check,
                model="iris",
                version="v2",
                environment="production",
                window_seconds=spec.interval_seconds,
            )
            for check in spec.checks
        }
        run = run.after(judge_round(spec, measurements), spec)
        history.append(run)
        if run.rolled_back:
            break
    return history


def script_good(source: FakeMetrics) -> None:
    for name, measurement in good().items():
        source.set(name, "v2", measurement)


def test_inconclusive_never_promotes_however_long_it_lasts() -> None:
    source = FakeMetrics()
    script_good(source)
    source.set("latency-p99", "v2", Measurement.missing("query returned no series"))
    history = run_rounds(source, analysis(), rounds=50)
    assert len(history) == 50
    assert not any(run.may_advance or run.rolled_back for run in history)
    assert history[-1].failures == 0
    assert history[-1].holding_rounds == 50
    assert history[-1].decision is not None
    assert "query returned no series" in history[-1].decision.reason


def test_data_arriving_lets_the_rollout_continue() -> None:
    source = FakeMetrics()
    script_good(source)
    source.set(
        "enough-traffic",
        "v2",
        Measurement.missing("no requests in the window", samples=0),
        Measurement(500.0, samples=500),
    )
    history = run_rounds(source, analysis(), rounds=2)
    assert [run.decision.action for run in history if run.decision] == ["hold", "continue"]
    assert history[-1].may_advance and history[-1].holding_rounds == 0


def test_failures_are_counted_in_total_and_roll_back_at_the_limit() -> None:
    source = FakeMetrics()
    script_good(source)
    source.set("success-rate", "v2", Measurement(0.9), Measurement(0.999), Measurement(0.95))
    history = run_rounds(source, analysis(failure_limit=2), rounds=10)
    assert [run.decision.action for run in history if run.decision] == ["hold", "continue", "rollback"]
    assert history[-1].failures == 2
    assert history[-1].rolled_back


def test_no_data_fail_rolls_back_a_silent_canary() -> None:
    source = FakeMetrics()
    script_good(source)
    source.set("latency-p99", "v2", Measurement.missing("no requests in the window"))
    history = run_rounds(source, analysis(no_data="fail", failure_limit=2), rounds=10)
    assert len(history) == 2 and history[-1].rolled_back


def test_fake_metrics_records_calls_and_reports_unscripted_checks() -> None:
    source = FakeMetrics()
    measurement = source.measure(
        SUCCESS, model="iris", version="v9", environment="staging", window_seconds=30
    )
    assert measurement.value is None and measurement.reason == NOT_SCRIPTED
    assert source.calls[0].version == "v9" and source.calls[0].window_seconds == 30

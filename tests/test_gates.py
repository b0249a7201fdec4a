"""Validation gates: absolute bounds, direction-aware change gates, and "no baseline" never passing."""

from __future__ import annotations

import pytest

from controller.engine.gates import evaluate_gates, failed_gates
from controller.specs.types import Gate, Metric, Model, Source

pytestmark = pytest.mark.unit


def _model(*gates: Gate) -> Model:
    return Model(
        name="m",
        spec_path="specs/m/model.yaml",
        source=Source(path="specs/m", requirements="specs/m/requirements.txt"),
        metrics=(Metric("accuracy", "higher"), Metric("log_loss", "lower")),
        gates=gates,
    )


def test_absolute_bounds_pass_and_fail() -> None:
    model = _model(Gate("accuracy", min=0.9), Gate("log_loss", max=0.5))
    results = evaluate_gates(model, metrics={"accuracy": 0.95, "log_loss": 0.7}, baseline=None)
    assert [r.outcome for r in results] == ["passed", "failed"]
    assert "log_loss = 0.7, needs ≤ 0.5" in results[1].message


def test_change_gate_without_production_is_no_baseline_and_does_not_fail() -> None:
    model = _model(Gate("accuracy", max_regression=0.01))
    results = evaluate_gates(model, metrics={"accuracy": 0.2}, baseline=None)
    assert results[0].outcome == "no_baseline"
    assert failed_gates(results) == []


@pytest.mark.parametrize(
    ("metric", "value", "baseline", "outcome"),
    [
        ("accuracy", 0.90, 0.92, "failed"),  # higher is better: dropped by 0.02 > 0.01
        ("accuracy", 0.915, 0.92, "passed"),  # dropped by 0.005
        ("accuracy", 0.99, 0.92, "passed"),  # improved
        ("log_loss", 0.30, 0.28, "failed"),  # lower is better: rose by 0.02
        ("log_loss", 0.20, 0.28, "passed"),  # fell: an improvement, not a regression
    ],
)
def test_absolute_change_gate_follows_the_metric_direction(
    metric: str, value: float, baseline: float, outcome: str
) -> None:
    model = _model(Gate(metric, max_regression=0.01))
    (result,) = evaluate_gates(model, metrics={metric: value}, baseline={metric: baseline})
    assert result.outcome == outcome
    assert result.baseline == baseline


def test_relative_change_gate() -> None:
    model = _model(Gate("log_loss", max_relative_regression=0.10))
    (ok,) = evaluate_gates(model, metrics={"log_loss": 0.105}, baseline={"log_loss": 0.1})
    (bad,) = evaluate_gates(model, metrics={"log_loss": 0.12}, baseline={"log_loss": 0.1})
    assert (ok.outcome, bad.outcome) == ("passed", "failed")
    assert "20.0%" in bad.message


def test_missing_metric_fails_its_gate() -> None:
    model = _model(Gate("accuracy", min=0.5))
    (result,) = evaluate_gates(model, metrics={}, baseline=None)
    assert result.outcome == "failed"
    assert "not reported" in result.message


def test_gate_results_round_trip_through_json() -> None:
    from controller.engine.gates import GateResult

    (result,) = evaluate_gates(_model(Gate("accuracy", min=0.5)), metrics={"accuracy": 0.7}, baseline=None)
    assert GateResult.from_json(result.to_json()) == result

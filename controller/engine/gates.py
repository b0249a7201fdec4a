"""Validation gates: judge a run's metrics against absolute bounds and against production.

Pure functions, called by the reconciler when a run finishes and by the report
renderer. A change gate with no production version to compare with is
``no_baseline``: shown as such, never counted as passed, and it does not fail
the run (there is nothing to regress from).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from controller.specs.types import Gate, Model

GateOutcome = Literal["passed", "failed", "no_baseline"]


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate, with the figures it was decided on."""

    metric: str
    rule: str  # a person's reading of the gate, e.g. "≥ 0.85" or "regression ≤ 0.02"
    outcome: GateOutcome
    value: float | None
    baseline: float | None
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "rule": self.rule,
            "outcome": self.outcome,
            "value": self.value,
            "baseline": self.baseline,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GateResult:
        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        outcome = str(data["outcome"])
        assert outcome in ("passed", "failed", "no_baseline")
        return cls(
            metric=str(data["metric"]),
            rule=str(data["rule"]),
            outcome=outcome,  # type: ignore[arg-type]
            value=number("value"),
            baseline=number("baseline"),
            message=str(data["message"]),
        )


def describe(gate: Gate) -> str:
    if gate.min is not None:
        return f"≥ {gate.min:g}"
    if gate.max is not None:
        return f"≤ {gate.max:g}"
    if gate.max_regression is not None:
        return f"regression ≤ {gate.max_regression:g}"
    assert gate.max_relative_regression is not None
    return f"regression ≤ {gate.max_relative_regression:.0%}"


def regression(value: float, baseline: float, *, lower_is_better: bool) -> float:
    """How much worse ``value`` is than ``baseline`` (negative when it is better)."""
    return value - baseline if lower_is_better else baseline - value


def evaluate_gate(
    gate: Gate,
    *,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    lower_is_better: bool,
) -> GateResult:
    rule = describe(gate)
    value = metrics.get(gate.metric)
    base = baseline.get(gate.metric) if baseline is not None else None

    def result(outcome: GateOutcome, message: str) -> GateResult:
        return GateResult(gate.metric, rule, outcome, value, base, message)

    if value is None or not math.isfinite(value):
        return result("failed", f"{gate.metric} was not reported by the pipeline")
    if gate.min is not None:
        ok = value >= gate.min
        return result("passed" if ok else "failed", f"{gate.metric} = {value:.4g}, needs {rule}")
    if gate.max is not None:
        ok = value <= gate.max
        return result("passed" if ok else "failed", f"{gate.metric} = {value:.4g}, needs {rule}")

    if base is None:
        return result("no_baseline", f"{gate.metric}: no production version to compare with")
    worse_by = regression(value, base, lower_is_better=lower_is_better)
    if gate.max_regression is not None:
        ok = worse_by <= gate.max_regression
        return result(
            "passed" if ok else "failed",
            f"{gate.metric} {_change_words(worse_by)} production by {abs(worse_by):.4g}, allowed {rule}",
        )
    assert gate.max_relative_regression is not None
    if base == 0:
        relative = 0.0 if worse_by <= 0 else math.inf
    else:
        relative = worse_by / abs(base)
    ok = relative <= gate.max_relative_regression
    return result(
        "passed" if ok else "failed",
        f"{gate.metric} {_change_words(worse_by)} production by {abs(relative):.1%}, allowed {rule}",
    )


def _change_words(worse_by: float) -> str:
    if worse_by > 0:
        return "is worse than"
    if worse_by < 0:
        return "is better than"
    return "equals"


def evaluate_gates(
    model: Model, *, metrics: Mapping[str, float], baseline: Mapping[str, float] | None
) -> list[GateResult]:
    """Every gate of ``model``, in spec order."""
    results = []
    for gate in model.gates:
        declared = model.metric(gate.metric)
        lower = declared is not None and declared.direction == "lower"
        results.append(evaluate_gate(gate, metrics=metrics, baseline=baseline, lower_is_better=lower))
    return results


def failed_gates(results: Sequence[GateResult]) -> list[GateResult]:
    return [r for r in results if r.outcome == "failed"]

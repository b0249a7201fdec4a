"""The review report: what it shows, how gates read, and that it always fits a GitHub comment."""

from __future__ import annotations

import pytest

from controller.engine.gates import GateResult
from controller.engine.report import COMMENT_LIMIT, ReviewReport, StepLine, marker, render_report

pytestmark = pytest.mark.unit


def _report(**changes: object) -> ReviewReport:
    base: dict[str, object] = {
        "model": "iris",
        "proposal": "tune-c",
        "commit": "0123456789abcdef",
        "outcome": "success",
        "run_id": "r-1",
        "metrics": {"accuracy": 0.95, "log_loss": 0.2},
        "baseline": {"accuracy": 0.93, "log_loss": 0.25},
        "baseline_version": "v3",
        "directions": {"accuracy": "higher", "log_loss": "lower"},
        "primary_metric": "accuracy",
        "gates": [
            GateResult("accuracy", "≥ 0.9", "passed", 0.95, 0.93, "accuracy = 0.95, needs ≥ 0.9"),
            GateResult("accuracy", "regression ≤ 0.01", "no_baseline", 0.95, None, "no production"),
        ],
        "params_changed": {"C": (1.0, 0.5)},
        "data_fingerprints": {"iris": "sha256:abc"},
        "steps": [StepLine("train", "succeeded", 1.5), StepLine("evaluate", "cached")],
        "logs_location": ".flywheel/runs/r-1/logs",
    }
    base.update(changes)
    return ReviewReport(**base)  # type: ignore[arg-type]


def test_report_shows_metrics_against_production_with_direction() -> None:
    text = render_report(_report())
    assert text.startswith(marker("iris"))
    assert "| **accuracy** | 0.95 | 0.93 | +0.02 ▲ better |" in text
    assert "| log_loss | 0.2 | 0.25 | -0.05 ▲ better |" in text
    assert "production (v3)" in text


def test_change_gate_without_baseline_reads_no_baseline_not_passed() -> None:
    text = render_report(_report())
    assert "| ✓ | `accuracy` | ≥ 0.9 |" in text
    assert "| – | `accuracy` | regression ≤ 0.01 | no baseline |" in text


def test_params_diff_steps_and_cache_hits_are_listed() -> None:
    text = render_report(_report())
    assert "| `C` | `1.0` | `0.5` |" in text
    assert "| `train` | succeeded | 1.5 s |" in text
    assert "| `evaluate` | succeeded | cache hit |" not in text
    assert "| `evaluate` | cached | cache hit |" in text


def test_huge_logs_are_trimmed_to_fit_the_comment_limit() -> None:
    tail = "\n".join(f"line {i} " + "x" * 200 for i in range(5000))
    steps = [StepLine(f"s{i}", "failed", 1.0, log_tail=tail) for i in range(30)]
    text = render_report(_report(outcome="error", steps=steps))
    assert len(text) <= COMMENT_LIMIT
    assert "<details>" in text
    assert text.startswith(marker("iris"))


def test_failed_step_shows_its_log_tail() -> None:
    steps = [StepLine("train", "failed", 0.3, log_tail="Traceback\nZeroDivisionError: boom")]
    text = render_report(_report(outcome="error", steps=steps))
    assert "ZeroDivisionError: boom" in text
    assert "errored" in text


def test_report_names_the_production_version_it_was_compared_with() -> None:
    text = render_report(_report())
    assert "Compared with the version in production: `iris` **v3**." in text
    assert "judged again" not in text
    none = render_report(_report(baseline=None, baseline_version=None))
    assert "No version serves production yet: change gates read *no baseline*" in none


def test_a_report_judged_again_says_production_changed_and_nothing_was_retrained() -> None:
    text = render_report(_report(rejudged_from="v2"))
    assert "Compared with the version in production: `iris` **v3**." in text
    assert "it was v2" in text and "nothing was trained again" in text

"""Canary analysis: judge live measurements and decide whether a rollout goes on.

Pure functions, no I/O. The rollout engine measures every check of a model's
``rollout.analysis`` through a metrics source once per interval, then calls

1. :func:`judge` on each measurement: passed, failed or inconclusive;
2. :func:`evaluate_round` on the round's results: a :class:`RoundVerdict`;
3. :func:`next_state` (or :meth:`AnalysisRun.after`) with the failures so
   far: continue, hold or roll back.

What no data means (Invariant 4: a rollout never promotes on missing data):

- A built-in ``requestCount`` check below its minimum is *inconclusive*: too
  few requests to judge, which holds the rollout like no data does.
- A measurement without a value is *inconclusive*. With ``noData:
  inconclusive`` (the default) it is never a pass and never a failure: the
  round is inconclusive and the rollout **holds**, saying why, until data
  comes. (Argo Rollouts aborts on an empty result; Flagger counts no data as a
  failure. Both turn a quiet canary or a scrape gap into a rollback.)
- With ``noData: fail`` the spec's author chose otherwise: missing data counts
  as a failed check.
- A round passes only when every configured check passed. A check with no
  result at all is inconclusive.
- Failures are counted in **total** failed rounds over the analysis run (one
  version's rollout to one environment), like Argo Rollouts' ``failureLimit``,
  not consecutive ones: a good round between two bad ones does not forgive
  the first. When the count reaches ``failure_limit`` the rollout rolls back.
  A failed round below the limit holds the rollout (it never advances on the
  heels of a failure); passed rounds let it continue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from controller.backends.metrics import Measurement
from controller.specs.types import Analysis, AnalysisCheck

CheckOutcome = Literal["passed", "failed", "inconclusive"]
RoundOutcome = Literal["passed", "failed", "inconclusive"]
Action = Literal["continue", "hold", "rollback"]


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one check in one round, with the figures it was decided on."""

    check: str
    rule: str  # a person's reading of the bounds, e.g. "≥ 0.99" or "between 0.1 and 0.5"
    outcome: CheckOutcome
    value: float | None
    samples: int | None
    message: str  # e.g. "success-rate = 0.93, needs ≥ 0.99"

    def to_json(self) -> dict[str, object]:
        return {
            "check": self.check,
            "rule": self.rule,
            "outcome": self.outcome,
            "value": self.value,
            "samples": self.samples,
            "message": self.message,
        }


@dataclass(frozen=True)
class RoundVerdict:
    """One analysis round: every check's result and what they add up to."""

    outcome: RoundOutcome
    results: tuple[CheckResult, ...]
    summary: str  # one sentence for people: what failed, or why there is no verdict

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "summary": self.summary,
            "results": [r.to_json() for r in self.results],
        }


@dataclass(frozen=True)
class Decision:
    """What the rollout does after a round, and why."""

    action: Action
    reason: str


def describe(check: AnalysisCheck) -> str:
    if check.min is not None and check.max is not None:
        return f"between {check.min:g} and {check.max:g}"
    if check.min is not None:
        return f"≥ {check.min:g}"
    if check.max is not None:
        return f"≤ {check.max:g}"
    return "any value"


def judge(check: AnalysisCheck, measurement: Measurement, *, min_samples: int | None = None) -> CheckResult:
    """Judge one measurement against the check's bounds.

    No value (or NaN) is inconclusive, with the source's reason. So is a value
    computed from fewer than ``min_samples`` requests, when the source says
    how many it counted.
    """
    rule = describe(check)
    value, samples = measurement.value, measurement.samples

    def result(outcome: CheckOutcome, message: str) -> CheckResult:
        return CheckResult(check.name, rule, outcome, value, samples, message)

    if value is None or math.isnan(value):
        return result("inconclusive", f"{check.name}: no data ({measurement.reason or 'no value'})")
    if min_samples is not None and samples is not None and samples < min_samples:
        return result(
            "inconclusive",
            f"{check.name}: only {samples} requests in the window, needs at least {min_samples} to judge",
        )
    too_low = check.min is not None and value < check.min
    too_high = check.max is not None and value > check.max
    if too_low and check.builtin == "requestCount":
        # Too few requests is missing evidence, not a bad canary: hold, never fail or pass.
        return result(
            "inconclusive",
            f"{check.name}: only {value:g} requests in the window, needs at least {check.min:g} to judge",
        )
    bound = check.min if too_low else check.max if too_high else None
    shown = _number(value, bound)
    if too_low or too_high:
        return result("failed", f"{check.name} = {shown}, needs {rule}")
    return result("passed", f"{check.name} = {shown} ({rule})")


def judge_round(
    analysis: Analysis, measurements: Mapping[str, Measurement], *, min_samples: int | None = None
) -> RoundVerdict:
    """Judge every check of ``analysis`` from measurements keyed by check name, and sum them up."""
    results = [
        judge(check, measurements[check.name], min_samples=min_samples)
        for check in analysis.checks
        if check.name in measurements
    ]
    return evaluate_round(analysis, results)


def evaluate_round(analysis: Analysis, results: Sequence[CheckResult]) -> RoundVerdict:
    """What one round's check results add up to.

    Any failed check fails the round. Otherwise any inconclusive check (or a
    configured check without a result) makes it inconclusive, unless
    ``analysis.no_data == "fail"``, where it counts as a failed check. Only a
    round where every check passed passes. An analysis without checks passes:
    the spec asked for none.
    """
    by_name = {r.check: r for r in results}
    judged: list[CheckResult] = []
    for check in analysis.checks:
        found = by_name.get(check.name)
        if found is None:
            found = CheckResult(
                check.name, describe(check), "inconclusive", None, None, f"{check.name}: not measured"
            )
        if found.outcome == "inconclusive" and analysis.no_data == "fail":
            found = replace(found, outcome="failed", message=f"{found.message}; noData is fail")
        judged.append(found)

    failed = [r for r in judged if r.outcome == "failed"]
    inconclusive = [r for r in judged if r.outcome == "inconclusive"]
    if failed:
        return RoundVerdict("failed", tuple(judged), "; ".join(r.message for r in failed))
    if inconclusive:
        return RoundVerdict("inconclusive", tuple(judged), "; ".join(r.message for r in inconclusive))
    if not judged:
        return RoundVerdict("passed", (), "no analysis checks configured")
    return RoundVerdict("passed", tuple(judged), "all checks passed: " + "; ".join(r.message for r in judged))


def next_state(failures_so_far: int, verdict: RoundVerdict, analysis: Analysis) -> tuple[int, Decision]:
    """The failure count after ``verdict`` and what the rollout does next.

    - passed: continue (the rollout may advance when its step is over);
    - inconclusive: hold and say why; the count does not change;
    - failed: count it; roll back when the count reaches ``failure_limit``,
      otherwise hold.
    """
    limit = analysis.failure_limit
    if verdict.outcome == "passed":
        return failures_so_far, Decision("continue", verdict.summary)
    if verdict.outcome == "inconclusive":
        return failures_so_far, Decision(
            "hold", f"holding, analysis is inconclusive (no data is not a pass): {verdict.summary}"
        )
    failures = failures_so_far + 1
    if failures >= limit:
        return failures, Decision(
            "rollback", f"rolling back after {failures} failed rounds (limit {limit}): {verdict.summary}"
        )
    return failures, Decision("hold", f"holding after failed round {failures} of {limit}: {verdict.summary}")


@dataclass(frozen=True)
class AnalysisRun:
    """The analysis of one version's rollout to one environment, round after round.

    ``holding_rounds`` counts the consecutive rounds that did not let the
    rollout continue (inconclusive or failed), so the engine can tell people
    how long it has been stuck.
    """

    rounds: int = 0
    failures: int = 0
    holding_rounds: int = 0
    last: RoundVerdict | None = None
    decision: Decision | None = None

    def after(self, verdict: RoundVerdict, analysis: Analysis) -> AnalysisRun:
        failures, decision = next_state(self.failures, verdict, analysis)
        holding = 0 if decision.action == "continue" else self.holding_rounds + 1
        return AnalysisRun(self.rounds + 1, failures, holding, verdict, decision)

    @property
    def may_advance(self) -> bool:
        """True only when the last round passed: never on missing data, never after a failure."""
        return self.decision is not None and self.decision.action == "continue"

    @property
    def rolled_back(self) -> bool:
        return self.decision is not None and self.decision.action == "rollback"


def _number(value: float, bound: float | None) -> str:
    """``value`` with enough digits that it does not read as equal to ``bound`` when it is not."""
    for digits in range(4, 16):
        shown = f"{value:.{digits}g}"
        if bound is None or value == bound or shown != f"{bound:.{digits}g}":
            return shown
    return repr(value)

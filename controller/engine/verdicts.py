"""What analysis rounds add up to: the verdict on each check, the round's outcome, what the rollout does next.

Pure records and arithmetic, no I/O and nothing from the backends, so that the
rollout planner (:mod:`controller.engine.rollout_plan`) can use them:
:func:`evaluate_round` sums up one round's check results into a
:class:`RoundVerdict`, and :func:`next_state` (or :meth:`AnalysisRun.after`)
turns it, with the failures so far, into a :class:`Decision` — continue, hold
or roll back. Judging one measurement against its check is
:func:`controller.engine.analysis.judge`; what no data means is described
there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from controller.specs.types import Analysis, AnalysisCheck

__all__ = [
    "Action",
    "AnalysisRun",
    "CheckOutcome",
    "CheckResult",
    "Decision",
    "RoundOutcome",
    "RoundVerdict",
    "describe",
    "evaluate_round",
    "next_state",
]

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


def evaluate_round(analysis: Analysis, results: Sequence[CheckResult]) -> RoundVerdict:
    """What one round's check results add up to.

    The request count comes first: a round whose built-in ``requestCount``
    check (one with a minimum) counted fewer requests than it asks for is
    inconclusive, whatever its other checks say and whatever ``noData`` says;
    so is a round whose request count is unknown (no data), unless ``noData``
    is ``fail``. The other checks are judged only with enough requests: their
    results are kept, marked not judged.

    Then any failed check fails the round. Otherwise any inconclusive check (or
    a configured check without a result) makes it inconclusive, unless
    ``analysis.no_data == "fail"``, where it counts as a failed check. Only a
    round where every check passed passes. An analysis without checks passes:
    the spec asked for none.
    """
    by_name = {r.check: r for r in results}
    measured = [
        by_name.get(check.name)
        or CheckResult(check.name, describe(check), "inconclusive", None, None, f"{check.name}: not measured")
        for check in analysis.checks
    ]
    waiting = _not_enough_requests(analysis, measured)
    if waiting:
        return _too_few_requests(measured, waiting)

    judged = [
        replace(r, outcome="failed", message=f"{r.message}; noData is fail")
        if r.outcome == "inconclusive" and analysis.no_data == "fail"
        else r
        for r in measured
    ]
    failed = [r for r in judged if r.outcome == "failed"]
    inconclusive = [r for r in judged if r.outcome == "inconclusive"]
    if failed:
        return RoundVerdict("failed", tuple(judged), "; ".join(r.message for r in failed))
    if inconclusive:
        return RoundVerdict("inconclusive", tuple(judged), "; ".join(r.message for r in inconclusive))
    if not judged:
        return RoundVerdict("passed", (), "no analysis checks configured")
    return RoundVerdict("passed", tuple(judged), "all checks passed: " + "; ".join(r.message for r in judged))


def _not_enough_requests(analysis: Analysis, measured: Sequence[CheckResult]) -> list[CheckResult]:
    """The request-count results that do not show enough requests to judge the other checks by.

    A count below the check's minimum (its value, or without one the requests
    the source says it saw) is too few, always. A count nobody knows (no data)
    is not enough either, unless ``noData`` is ``fail``: then it is a failed
    check like any other missing data.
    """
    waiting = []
    for check, result in zip(analysis.checks, measured, strict=True):
        if check.builtin != "requestCount" or check.min is None:
            continue
        count = result.value if result.value is not None else result.samples
        too_few = count is not None and count < check.min
        unknown = count is None and analysis.no_data != "fail"
        if too_few or unknown:
            waiting.append(result)
    return waiting


def _too_few_requests(measured: Sequence[CheckResult], waiting: Sequence[CheckResult]) -> RoundVerdict:
    """An inconclusive round for want of requests: the other checks' results kept, none of them judged."""
    names = {r.check for r in waiting}
    results = tuple(
        r if r.check in names else replace(r, outcome="inconclusive", message=f"{r.message} (not judged)")
        for r in measured
    )
    return RoundVerdict("inconclusive", results, "; ".join(r.message for r in waiting))


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

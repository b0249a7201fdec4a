"""Canary analysis: judge live measurements and decide whether a rollout goes on.

Pure functions, no I/O. The rollout engine measures every check of a model's
``rollout.analysis`` through a metrics source once per interval, then calls

1. :func:`judge` on each measurement: passed, failed or inconclusive;
2. :func:`evaluate_round` on the round's results: a :class:`RoundVerdict`;
3. :func:`next_state` (or :meth:`AnalysisRun.after`) with the failures so
   far: continue, hold or roll back.

Steps 2 and 3 and the records they return live in
:mod:`controller.engine.verdicts`, which needs nothing from the backends: the
rollout planner decides with them.

What no data means (Invariant 4: a rollout never promotes on missing data):

- The request count comes first. A built-in ``requestCount`` check below its
  minimum is *inconclusive*: too few requests to judge, which holds the
  rollout like no data does, and makes the whole round inconclusive whatever
  its other checks saw (a failing error rate on 2 requests is no evidence) and
  whatever ``noData`` says. Only with enough requests are the other checks
  judged (:func:`~controller.engine.verdicts.evaluate_round`).
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
from collections.abc import Mapping

from controller.backends.metrics import Measurement
from controller.engine.verdicts import CheckOutcome, CheckResult, RoundVerdict, describe, evaluate_round
from controller.specs.types import Analysis, AnalysisCheck

__all__ = ["judge", "judge_round"]


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


def _number(value: float, bound: float | None) -> str:
    """``value`` with enough digits that it does not read as equal to ``bound`` when it is not."""
    for digits in range(4, 16):
        shown = f"{value:.{digits}g}"
        if bound is None or value == bound or shown != f"{bound:.{digits}g}":
            return shown
    return repr(value)

"""Metrics sources: where a canary's live measurements come from.

One narrow interface, :class:`MetricsSource`, with one method: measure one
analysis check for one model version in one environment over a window. The
rollout engine calls it once per check per analysis round and hands the
:class:`Measurement` to :func:`controller.engine.analysis.judge`.

The interface speaks of model versions and environments only. Implementations:
:mod:`.builtin` (the embedded home: scrapes the ``/metrics`` of local
serving's router, whose address the composition root gives it),
:mod:`.prometheus` (PromQL through a Prometheus server) and :mod:`.fake`
(scripted measurements for engine tests). The composition root
(:mod:`controller.app`) picks one per environment, as its ``metrics.source``
says.

A source never raises for failures outside the controller: an unreachable
server, a failed query or a window without traffic is a :class:`Measurement`
without a value and with the reason, so the engine can hold the rollout and
tell people why (Invariant 4: no data is never a pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from controller.specs.types import AnalysisCheck

# The router's metrics, the same on both homes (see the serving contract).
REQUESTS_TOTAL = "flywheel_requests_total"  # counter: environment, model, version, outcome
REQUEST_DURATION = "flywheel_request_duration_seconds"  # histogram: environment, model, version
DEFAULT_PERCENTILE = 99.0  # for builtin latency checks without a percentile

NO_REQUESTS = "no requests in the window"
NO_SERIES = "query returned no series"


@dataclass(frozen=True)
class Measurement:
    """One measured value, or why there is none.

    ``samples`` is the number of requests the value was computed from, when the
    source knows it. ``reason`` is empty when there is a value.
    """

    value: float | None
    samples: int | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.value is not None and math.isnan(self.value):
            raise ValueError("a Measurement's value cannot be NaN; use value=None with a reason")
        if self.value is None and not self.reason:
            raise ValueError("a Measurement without a value needs a reason")

    @classmethod
    def missing(cls, reason: str, *, samples: int | None = None) -> Measurement:
        return cls(value=None, samples=samples, reason=reason)


class MetricsSource(Protocol):
    def measure(
        self, check: AnalysisCheck, *, model: str, version: str, environment: str, window_seconds: float
    ) -> Measurement:
        """Measure ``check`` for ``model`` at ``version`` in ``environment`` over the last window.

        Never raises for outside failures; returns ``Measurement.missing(reason)``.
        """
        ...


__all__ = [
    "DEFAULT_PERCENTILE",
    "NO_REQUESTS",
    "NO_SERIES",
    "REQUESTS_TOTAL",
    "REQUEST_DURATION",
    "Measurement",
    "MetricsSource",
]

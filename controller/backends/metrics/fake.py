"""Scripted measurements for engine and rollout tests, and for the demo.

``FakeMetrics`` answers each (check name, version) from a script: one
measurement for every round, or a list played one per call (the last one
repeats). Anything not scripted is "no data". Every call is recorded so tests
can assert what was asked, with which window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.backends.metrics import Measurement
from controller.specs.types import AnalysisCheck

NOT_SCRIPTED = "no measurement scripted"


@dataclass(frozen=True)
class MeasureCall:
    check: str
    model: str
    version: str
    environment: str
    window_seconds: float


@dataclass
class FakeMetrics:
    script: dict[tuple[str, str], Measurement | Sequence[Measurement]] = field(default_factory=dict)
    calls: list[MeasureCall] = field(default_factory=list)

    def set(self, check: str, version: str, *measurements: Measurement) -> None:
        """Script ``check`` for ``version``: the measurements in turn, then the last one forever."""
        self.script[(check, version)] = measurements[0] if len(measurements) == 1 else list(measurements)

    def measure(
        self, check: AnalysisCheck, *, model: str, version: str, environment: str, window_seconds: float
    ) -> Measurement:
        calls_before = sum(1 for c in self.calls if (c.check, c.version) == (check.name, version))
        self.calls.append(MeasureCall(check.name, model, version, environment, window_seconds))
        scripted = self.script.get((check.name, version))
        if scripted is None:
            return Measurement.missing(NOT_SCRIPTED)
        if isinstance(scripted, Measurement):
            return scripted
        if not scripted:
            return Measurement.missing(NOT_SCRIPTED)
        return scripted[min(calls_before, len(scripted) - 1)]

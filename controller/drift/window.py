"""Live windows of one served version: a bounded sample of its requests, evaluated for drift.

The router (:mod:`controller.backends.serving.router`) keeps one
:class:`VersionMonitor` per model version that has a reference profile and
hands it the rows of each answered inference request (:meth:`VersionMonitor.add`).
Time is cut into windows of ``window_seconds``; each window keeps a uniform
reservoir sample of at most ``sample_size`` rows (Vitter's algorithm R), so
memory is bounded whatever the traffic. :meth:`VersionMonitor.report` says
how the latest window with enough rows (the current one, else the last
closed one) drifts, feature by feature, and for how many windows in a row
each feature has drifted. Time comes from the caller (a monotonic clock).

:meth:`VersionMonitor.to_state` and :meth:`VersionMonitor.restore` carry the
windows across a restart of the router (:mod:`controller.backends.serving.drift_watch`
writes them to its state directory): the closed windows' results, and, when
asked, the open window's sample. Window starts are kept as seconds before
the moment of saving, so a monitor restored under another monotonic clock
(a rebooted machine) places them by the wall-clock time that passed.
"""


from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.drift.profile import PREDICTION, CategoricalFeature, Feature, Profile, category
from controller.drift.stats import NOT_ENOUGH_DATA, FeatureDrift, evaluate
from controller.specs.types import DriftMonitoring

__all__ = ["DriftReport", "Reservoir", "VersionMonitor"]


class Reservoir:
    """A uniform sample of at most ``capacity`` of the items added (algorithm R), with a seeded generator."""

    def __init__(self, capacity: int, *, seed: int = 0) -> None:
        self.capacity = capacity
        self.items: list[Any] = []
        self.seen = 0
        self._random = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.capacity:
            self.items[slot] = item


@dataclass(frozen=True)
class DriftReport:
    """How one version drifts in its latest window with enough data."""

    window: str  # "current", or "previous" while the current one has too few rows
    window_started: float  # monotonic seconds
    rows: int  # live rows seen in that window (the sample holds at most sample_size of them)
    features: tuple[FeatureDrift, ...]
    sustained: dict[str, int] = field(default_factory=dict)  # feature -> windows in a row it drifted
    settings: DriftMonitoring = field(default_factory=DriftMonitoring)

    def sustained_drift(self, feature: str) -> bool:
        return self.sustained.get(feature, 0) >= self.settings.sustained_windows

    @property
    def enough_data(self) -> bool:
        """Some feature of the window has enough rows to say whether it drifts."""
        return any(f.status != NOT_ENOUGH_DATA for f in self.features)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DriftReport:
        """The inverse of :meth:`to_json` (its ``window_started``, a monotonic time, is not kept)."""
        features = doc["features"]
        return cls(
            window=str(doc["window"]), window_started=0.0, rows=int(doc["rows"]),
            features=tuple(FeatureDrift.from_json(f) for f in features),
            sustained={str(f["feature"]): int(f.get("sustained_windows", 0)) for f in features},
            settings=DriftMonitoring.from_json(doc.get("settings") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "rows": self.rows,
            "features": [
                {**f.to_json(), "sustained_windows": self.sustained.get(f.feature, 0),
                 "sustained": self.sustained_drift(f.feature)}
                for f in self.features
            ],
            "settings": self.settings.to_json(),
        }


@dataclass
class _Window:
    started: float
    sample: Reservoir


class VersionMonitor:
    """The live windows of one model version against its reference ``profile``."""

    def __init__(self, profile: Profile, settings: DriftMonitoring, *, now: float, seed: int = 0) -> None:
        self.profile = profile
        self.settings = settings
        chosen = set(settings.features)
        self.features: tuple[Feature, ...] = tuple(
            f for f in profile.features if not chosen or f.name in chosen
        )
        self._tested: tuple[Feature, ...] = self.features + (
            (profile.prediction,) if profile.prediction is not None else ()
        )
        names = {f.name for f in self.features}
        self._positions = [i for i, f in enumerate(profile.features) if f.name in names]
        self._seed = seed
        self._window = _Window(now, Reservoir(settings.sample_size, seed=seed))
        self._closed: deque[list[FeatureDrift]] = deque(maxlen=max(1, settings.sustained_windows))
        self._previous: tuple[float, int, list[FeatureDrift]] | None = None
        self._cache: tuple[float, int, list[FeatureDrift]] | None = None
        self.closed_windows = 0  # windows closed since this monitor started (the router saves on a change)

    @property
    def width(self) -> int:
        """The number of input values a live row must have (the reference's features)."""
        return len(self.profile.features)

    def add(self, rows: Sequence[Sequence[Any]], predictions: Sequence[Any] | None, *, now: float) -> None:
        """Sample the rows of one request (each in serving order) and their predictions, if known."""
        self._roll(now)
        sample = self._window.sample
        for index, row in enumerate(rows):
            prediction = predictions[index] if predictions is not None and index < len(predictions) else None
            sample.add((row, prediction))

    def report(self, *, now: float) -> DriftReport:
        self._roll(now)
        window = self._window
        current = self._evaluate_current()
        if window.sample.seen >= self.settings.min_samples or self._previous is None:
            label, started, rows, results = "current", window.started, window.sample.seen, current
            history = [*self._closed, current]
        else:
            label = "previous"
            started, rows, results = self._previous
            history = list(self._closed)
        sustained: dict[str, int] = {}
        for feature in (f.feature for f in results):
            count = 0
            for past in reversed(history):
                drifted = next((f.drifted for f in past if f.feature == feature), False)
                if not drifted:
                    break
                count += 1
            sustained[feature] = count
        return DriftReport(window=label, window_started=started, rows=rows, features=tuple(results),
                           sustained=sustained, settings=self.settings)

    # ------------------------------------------------------------ windows

    def _roll(self, now: float) -> None:
        width = self.settings.window_seconds
        window = self._window
        if now < window.started + width:
            return
        results = self._evaluate_current()
        self._closed.append(results)
        self._previous = (window.started, window.sample.seen, results)
        skipped = int((now - window.started) // width)
        for _ in range(min(skipped - 1, self._closed.maxlen or 1)):
            self._closed.append([  # whole windows without traffic: not enough data, which ends a streak
                FeatureDrift(f.name, f.kind, 0, NOT_ENOUGH_DATA) for f in self._tested
            ])
        self._window = _Window(window.started + skipped * width, Reservoir(self.settings.sample_size,
                                                                           seed=self._seed))
        self._cache = None
        self.closed_windows += 1

    # ------------------------------------------------------------ restarts

    def to_state(self, *, now: float, include_open: bool) -> dict[str, Any]:
        """The windows as JSON: the closed ones' results; the open one's sample when ``include_open``."""
        state: dict[str, Any] = {
            "windowSeconds": self.settings.window_seconds,
            "closed": [[f.to_json() for f in results] for results in self._closed],
            "previous": None,
            "open": None,
        }
        if self._previous is not None:
            started, rows, results = self._previous
            features = [f.to_json() for f in results]
            state["previous"] = {"age": now - started, "rows": rows, "features": features}
        window = self._window
        if include_open:
            state["open"] = {"age": now - window.started, "seen": window.sample.seen,
                             "rows": [[list(row), prediction] for row, prediction in window.sample.items]}
        return state

    def restore(self, state: dict[str, Any], *, now: float, elapsed: float) -> None:
        """Take back the windows :meth:`to_state` gave, saved ``elapsed`` seconds ago (wall clock).

        Windows of another width are not comparable and are dropped; the open
        window, when saved, goes on from where it was (and closes at once if
        its time passed while the router was down).
        """
        if float(state.get("windowSeconds", -1)) != self.settings.window_seconds:
            return
        for results in state.get("closed", []):
            self._closed.append([FeatureDrift.from_json(f) for f in results])
        previous = state.get("previous")
        if previous:
            results = [FeatureDrift.from_json(f) for f in previous["features"]]
            self._previous = (now - elapsed - float(previous["age"]), int(previous["rows"]), results)
        opened = state.get("open")
        if opened:
            sample = Reservoir(self.settings.sample_size, seed=self._seed)
            sample.items = [(row, prediction) for row, prediction in opened["rows"]][: sample.capacity]
            sample.seen = max(int(opened["seen"]), len(sample.items))
            self._window = _Window(now - elapsed - float(opened["age"]), sample)
        else:  # the open window was lost: the next one starts where it would have
            width = self.settings.window_seconds
            last = self._previous[0] if self._previous is not None else now
            self._window = _Window(last + width, self._window.sample)
            if self._window.started > now:
                self._window = _Window(now, self._window.sample)
        self._cache = None
        self._roll(now)

    def _evaluate_current(self) -> list[FeatureDrift]:
        window = self._window
        key = (window.started, window.sample.seen)
        if self._cache is not None and self._cache[:2] == key:
            return self._cache[2]
        items = window.sample.items
        live: dict[str, Any] = {}
        for position, feature in zip(self._positions, self.features, strict=True):
            column = [row[position] for row, _ in items]
            live[feature.name] = _column(feature, column)
        if self.profile.prediction is not None:
            predictions = [p for _, p in items if p is not None]
            live[PREDICTION] = _column(self.profile.prediction, predictions)
        results = evaluate(self._tested, live, self.settings)
        self._cache = (*key, results)
        return results


def _column(feature: Feature, values: list[Any]) -> Any:
    if isinstance(feature, CategoricalFeature):
        return [category(v) for v in values if v is not None]
    numbers = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[i] = value
    return numbers

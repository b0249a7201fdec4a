"""Drift statistics of one window of live rows against a reference profile: pure functions.

:func:`evaluate` is called by the live windows (:mod:`controller.drift.window`)
and by the benchmark. Per feature it computes the population stability index
(PSI) over the reference's bins (numeric: its quantile bins; categorical: its
categories) and a two-sample test: Kolmogorov–Smirnov against the reference's
sample for numeric features, chi-square of homogeneity against the
reference's counts for categorical ones (both from scipy). A feature drifts
when its PSI reaches the alert band or its test rejects at the family-wise
p-value divided by the number of features tested (Bonferroni); it warns when
its PSI reaches the warning band. A window with fewer live rows than the
minimum is ``not enough data``: no statistic is claimed for it, and it never
reads as "no drift".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from scipy import stats

from controller.drift.profile import OTHER, CategoricalFeature, Feature, NumericFeature
from controller.specs.types import DriftMonitoring

__all__ = ["NOT_ENOUGH_DATA", "FeatureDrift", "Status", "evaluate", "psi"]

Status = Literal["not enough data", "stable", "warn", "drift"]
NOT_ENOUGH_DATA: Status = "not enough data"
_EPSILON = 1e-4  # share given to an empty bin so that PSI stays finite


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    samples: int  # live values of this feature in the window
    status: Status
    psi: float | None = None
    test: str = ""  # ks | chi2
    p_value: float | None = None
    threshold: float = 0.0  # the p-value the test was held to (after the correction)

    @property
    def drifted(self) -> bool:
        return self.status == "drift"

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature, "kind": self.kind, "samples": self.samples, "status": self.status,
            "psi": self.psi, "test": self.test, "p_value": self.p_value, "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FeatureDrift:
        """The inverse of :meth:`to_json` (a drift table read back from a router or a file)."""
        status = str(doc["status"])
        if status not in ("not enough data", "stable", "warn", "drift"):
            raise ValueError(f"unknown drift status {status!r}")
        return cls(
            feature=str(doc["feature"]), kind=str(doc["kind"]), samples=int(doc["samples"]),
            status=cast(Status, status),
            psi=None if doc.get("psi") is None else float(doc["psi"]), test=str(doc.get("test", "")),
            p_value=None if doc.get("p_value") is None else float(doc["p_value"]),
            threshold=float(doc.get("threshold", 0.0)),
        )


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> float:
    """The population stability index of two distributions over the same bins (shares summing to 1)."""
    e = np.clip(expected, _EPSILON, None)
    a = np.clip(actual, _EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def evaluate(
    features: Sequence[Feature],
    live: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    settings: DriftMonitoring,
) -> list[FeatureDrift]:
    """Each feature's drift: ``live`` maps a feature's name to its live values (numbers, or categories)."""
    threshold = settings.p_value / max(1, len(features))
    results = []
    for feature in features:
        values = live.get(feature.name, ())
        if isinstance(feature, NumericFeature):
            results.append(_numeric(feature, _finite(values), settings, threshold))
        else:
            results.append(_categorical(feature, [str(v) for v in values], settings, threshold))
    return results


def _finite(values: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64) if len(values) else np.empty(0)
    return array[np.isfinite(array)]


def _status(psi_value: float, p_value: float, threshold: float, settings: DriftMonitoring) -> Status:
    if psi_value >= settings.psi_alert or p_value < threshold:
        return "drift"
    return "warn" if psi_value >= settings.psi_warn else "stable"


def _numeric(
    feature: NumericFeature, live: npt.NDArray[np.float64], settings: DriftMonitoring, threshold: float
) -> FeatureDrift:
    if live.size < settings.min_samples:
        return FeatureDrift(feature.name, "numeric", int(live.size), NOT_ENOUGH_DATA, test="ks",
                            threshold=threshold)
    edges = np.asarray(feature.edges, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, live, side="right"), minlength=edges.size + 1)
    value = psi(np.asarray(feature.shares), counts / live.size)
    p_value = float(stats.ks_2samp(feature.sample, live, method="asymp").pvalue)
    return FeatureDrift(feature.name, "numeric", int(live.size), _status(value, p_value, threshold, settings),
                        psi=value, test="ks", p_value=p_value, threshold=threshold)


def _categorical(
    feature: CategoricalFeature, live: list[str], settings: DriftMonitoring, threshold: float
) -> FeatureDrift:
    if len(live) < settings.min_samples:
        return FeatureDrift(feature.name, "categorical", len(live), NOT_ENOUGH_DATA, test="chi2",
                            threshold=threshold)
    categories = list(feature.counts)
    if OTHER not in feature.counts:
        categories.append(OTHER)
    index = {c: i for i, c in enumerate(categories)}
    other = index[OTHER]
    live_counts = np.bincount([index.get(v, other) for v in live], minlength=len(categories))
    reference = np.asarray([feature.counts.get(c, 0) for c in categories], dtype=np.float64)
    value = psi(reference / reference.sum(), live_counts / live_counts.sum())
    table = np.vstack([reference, live_counts.astype(np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    p_value = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table).pvalue)
    return FeatureDrift(feature.name, "categorical", len(live), _status(value, p_value, threshold, settings),
                        psi=value, test="chi2", p_value=p_value, threshold=threshold)

"""A version's reference profile: what its training inputs looked like, for drift to compare against.

The engine's judge (:mod:`controller.engine.judging`) calls :func:`build_profile`
on the sample a train step wrote to ``FLYWHEEL_REFERENCE_DATA`` (CSV with a
header, or JSON lines of objects; see :mod:`flywheel_reference`) and writes it
with :func:`write_profile` into the run's model directory, so the artifact's
digest, and with it the version, covers it. The router
(:mod:`controller.backends.serving.router`) reads it with :func:`read_profile`.

Per feature, in serving order: numeric features get ten quantile bins (their
inner edges and each bin's share of the reference) and a bounded uniform
sample of values (for the Kolmogorov–Smirnov test); categorical ones get the
count of each category. The reference's column ``__prediction__``, when
present, is the model's predictions on those rows and is profiled like a
feature. Building the same data twice gives the same bytes (the sample's
random generator is seeded), so the artifact digest stays content-addressed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PREDICTION",
    "PROFILE_FILE",
    "CategoricalFeature",
    "NumericFeature",
    "Profile",
    "ProfileError",
    "build_profile",
    "category",
    "read_profile",
    "read_reference_rows",
    "write_profile",
]

PREDICTION = "__prediction__"
"""The reference column (and the drift table's feature) holding the model's predictions."""
PROFILE_FILE = "flywheel-reference-profile.json"
"""The profile's file name in a model directory."""
BINS = 10
SAMPLE_LIMIT = 10_000  # reference values kept per numeric feature for the KS test
CATEGORY_LIMIT = 50  # distinct categories kept; the rest are counted as OTHER
OTHER = "__other__"
_MAX_INTEGER_CATEGORIES = 20  # integer columns with at most this many values are categories (class labels)


class ProfileError(ValueError):
    """The reference data cannot be read or profiled; the message says where and why."""


@dataclass(frozen=True)
class NumericFeature:
    name: str
    edges: tuple[float, ...]  # inner bin edges, ascending: len(edges) + 1 bins
    shares: tuple[float, ...]  # the reference's share of each bin
    sample: npt.NDArray[np.float64]  # up to SAMPLE_LIMIT reference values, sorted
    count: int

    kind = "numeric"


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    counts: dict[str, int]  # category -> rows of the reference (OTHER for the rare rest)
    count: int

    kind = "categorical"


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class Profile:
    features: tuple[Feature, ...]  # in serving order; the predictions, if any, are not among them
    prediction: Feature | None = None
    rows: int = 0
    source_digest: str = ""  # sha256 of the reference data it was built from
    meta: dict[str, Any] = field(default_factory=dict)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "rows": self.rows,
            "source_digest": self.source_digest,
            "features": [_feature_json(f) for f in self.features],
            "prediction": None if self.prediction is None else _feature_json(self.prediction),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Profile:
        if doc.get("format") != 1:
            raise ProfileError(f"unknown reference profile format {doc.get('format')!r}")
        prediction = doc.get("prediction")
        return cls(
            features=tuple(_feature_from_json(f) for f in doc["features"]),
            prediction=None if prediction is None else _feature_from_json(prediction),
            rows=int(doc.get("rows", 0)),
            source_digest=str(doc.get("source_digest", "")),
        )


def category(value: Any) -> str:
    """A categorical value as the profile and the live windows both spell it (2.0 and 2 are "2")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def read_reference_rows(path: Path) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of a reference file: CSV with a header (values as text), or JSON lines."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the reference data: {exc.strerror or exc}") from exc
    if text.lstrip().startswith("{"):
        return _json_lines(path, text)
    reader = csv.reader(io.StringIO(text))
    try:
        columns = next(reader)
    except StopIteration:
        raise ProfileError(f"{path}: the reference data is empty") from None
    rows: list[list[Any]] = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(columns):
            raise ProfileError(f"{path}:{number}: {len(row)} values, the header names {len(columns)}")
        rows.append(row)
    return columns, rows


def build_profile(path: Path) -> Profile:
    """The profile of the reference data at ``path`` (:class:`ProfileError` when it cannot be read)."""
    columns, rows = read_reference_rows(path)
    if not rows:
        raise ProfileError(f"{path}: the reference data has no rows")
    features: list[Feature] = []
    prediction: Feature | None = None
    for index, name in enumerate(columns):
        profiled = _profile_column(name, [row[index] for row in rows])
        if name == PREDICTION:
            prediction = profiled
        else:
            features.append(profiled)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return Profile(features=tuple(features), prediction=prediction, rows=len(rows), source_digest=digest)


def write_profile(profile: Profile, directory: Path) -> Path:
    path = directory / PROFILE_FILE
    path.write_text(json.dumps(profile.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
    return path


def read_profile(path: Path) -> Profile:
    try:
        return Profile.from_json(json.loads(path.read_text()))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the reference profile: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"{path}: not a reference profile: {exc}") from exc


# ------------------------------------------------------------------ helpers


def _json_lines(path: Path, text: str) -> tuple[list[str], list[list[Any]]]:
    columns: list[str] = []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ProfileError(f"{path}:{number}: expected an object of column: value")
        for key in record:
            if key not in columns:
                columns.append(key)
        records.append(record)
    return columns, [[record.get(c) for c in columns] for record in records]


def _as_numbers(values: list[Any]) -> npt.NDArray[np.float64] | None:
    """The values as floats when every one is a number (or a number's text, from CSV); None if not."""
    if any(isinstance(v, bool) or not isinstance(v, int | float | str) for v in values):
        return None
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return None


def _profile_column(name: str, values: list[Any]) -> Feature:
    present = [v for v in values if v is not None and v != ""]
    numbers = _as_numbers(present)
    if numbers is not None:
        distinct = np.unique(numbers)
        integral = bool(np.all(np.isfinite(distinct)) and np.all(distinct == np.round(distinct)))
        if not (integral and distinct.size <= _MAX_INTEGER_CATEGORIES):
            finite = numbers[np.isfinite(numbers)]
            if finite.size == 0:
                raise ProfileError(f"column {name}: no finite values")
            return _numeric(name, finite)
        present = numbers.tolist()
    counts: dict[str, int] = {}
    for value in present:
        key = category(value)
        counts[key] = counts.get(key, 0) + 1
    kept = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:CATEGORY_LIMIT])
    rest = sum(counts.values()) - sum(kept.values())
    if rest:
        kept[OTHER] = rest
    return CategoricalFeature(name=name, counts=kept, count=len(present))


def _numeric(name: str, values: npt.NDArray[np.float64]) -> NumericFeature:
    quantiles = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    shares = counts / values.size
    if values.size > SAMPLE_LIMIT:
        generator = np.random.default_rng(0)
        sample = generator.choice(values, size=SAMPLE_LIMIT, replace=False)
    else:
        sample = values
    return NumericFeature(
        name=name,
        edges=tuple(float(e) for e in edges),
        shares=tuple(float(s) for s in shares),
        sample=np.sort(sample),
        count=int(values.size),
    )


def _feature_json(feature: Feature) -> dict[str, Any]:
    if isinstance(feature, NumericFeature):
        return {
            "name": feature.name, "kind": "numeric", "count": feature.count, "edges": list(feature.edges),
            "shares": list(feature.shares), "sample": [float(v) for v in feature.sample],
        }
    return {"name": feature.name, "kind": "categorical", "count": feature.count, "counts": feature.counts}


def _feature_from_json(doc: dict[str, Any]) -> Feature:
    if doc["kind"] == "numeric":
        return NumericFeature(
            name=str(doc["name"]),
            edges=tuple(float(e) for e in doc["edges"]),
            shares=tuple(float(s) for s in doc["shares"]),
            sample=np.asarray(doc["sample"], dtype=np.float64),
            count=int(doc["count"]),
        )
    if doc["kind"] == "categorical":
        return CategoricalFeature(
            name=str(doc["name"]), counts={str(k): int(v) for k, v in doc["counts"].items()},
            count=int(doc["count"]),
        )
    raise ProfileError(f"feature {doc.get('name')!r}: unknown kind {doc.get('kind')!r}")

"""Drift's pure parts: the reference helper, profiles, statistics, live windows and the spec's serving.drift.

Pinned down here:

* ``flywheel_reference.write`` writes a CSV with a header (and the
  ``__prediction__`` column), keeps at most ``limit`` rows chosen the same way
  every time, and does nothing outside a step;
* a profile is the same whether the reference is CSV or JSON lines, and the
  same bytes when built twice; integer columns with few values and text are
  categorical; an unreadable reference says where;
* PSI and the KS / chi-square tests say ``drift`` for a shifted feature and
  ``stable`` for one from the reference's distribution, with the p-value
  threshold split over the features (Bonferroni); too few rows is ``not
  enough data`` with no statistic;
* windows: a window's sample is bounded while every row is counted, the
  previous window is reported while the current one has too few rows, a
  feature drifting window after window counts as sustained, and a window
  without traffic ends the streak;
* ``serving.drift`` parses with its defaults, and PSI bands out of order are refused;
* an OIP request's input tensors become one row per instance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from controller.backends.serving.drift_watch import instance_rows
from controller.drift import VersionMonitor, build_profile, evaluate
from controller.drift.profile import (
    PREDICTION,
    CategoricalFeature,
    NumericFeature,
    Profile,
    ProfileError,
    read_profile,
    write_profile,
)
from controller.specs import load_catalog
from controller.specs.types import DriftMonitoring
from controller.steplib import flywheel_reference

pytestmark = pytest.mark.unit

SETTINGS = DriftMonitoring(min_samples=200, sample_size=1000, window_seconds=60, sustained_windows=2)


def _reference(tmp_path: Path, rows: int = 3000, seed: int = 0) -> Profile:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 2))
    colour = rng.choice(["red", "green", "blue"], size=rows, p=[0.5, 0.3, 0.2])
    table = [[a, b, c] for (a, b), c in zip(values.tolist(), colour.tolist(), strict=True)]
    path = flywheel_reference.write(table, ["x", "y", "colour"], path=tmp_path / "ref.csv")
    assert path is not None
    return build_profile(path)


def _live(
    rows: int, seed: int, *, shift: float = 0.0, colours: tuple[float, ...] = (0.5, 0.3, 0.2)
) -> list[list]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 2))
    values[:, 1] += shift
    colour = rng.choice(["red", "green", "blue"], size=rows, p=list(colours))
    return [[a, b, c] for (a, b), c in zip(values.tolist(), colour.tolist(), strict=True)]


def _columns(rows: list[list]) -> dict[str, list]:
    return {"x": [r[0] for r in rows], "y": [r[1] for r in rows], "colour": [r[2] for r in rows]}


# ------------------------------------------------------------------ the helper


def test_the_helper_writes_a_csv_with_the_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_REFERENCE_DATA", str(tmp_path / "ref"))
    rows = np.array([[1.5, 2.0], [3.0, 4.5]])
    path = flywheel_reference.write(rows, ["a", "b"], predictions=np.array([0, 1]))
    assert path == tmp_path / "ref"
    assert list(csv.reader(path.read_text().splitlines())) == [
        ["a", "b", PREDICTION], ["1.5", "2.0", "0"], ["3.0", "4.5", "1"]
    ]
    with pytest.raises(ValueError, match="row 1 has 1 values; columns name 2"):
        flywheel_reference.write([[1, 2], [3]], ["a", "b"])


def test_the_helper_samples_the_same_rows_every_time_and_is_quiet_outside_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [[i] for i in range(1000)]
    first = flywheel_reference.write(rows, ["i"], limit=100, path=tmp_path / "one")
    second = flywheel_reference.write(rows, ["i"], limit=100, path=tmp_path / "two")
    assert first is not None and second is not None
    assert first.read_bytes() == second.read_bytes()
    kept = [int(r[0]) for r in list(csv.reader(first.read_text().splitlines()))[1:]]
    assert len(kept) == 100 and kept == sorted(kept) and kept != list(range(100))
    monkeypatch.delenv("FLYWHEEL_REFERENCE_DATA", raising=False)
    assert flywheel_reference.write(rows, ["i"]) is None


# ------------------------------------------------------------------ profiles


def test_csv_and_json_lines_give_the_same_profile_and_the_same_bytes(tmp_path: Path) -> None:
    profile = _reference(tmp_path)
    csv_rows = list(csv.DictReader((tmp_path / "ref.csv").read_text().splitlines()))
    with (tmp_path / "ref.jsonl").open("w") as out:
        for row in csv_rows:
            record = {"x": float(row["x"]), "y": float(row["y"]), "colour": row["colour"]}
            out.write(json.dumps(record) + "\n")
    again = build_profile(tmp_path / "ref.jsonl")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    first = write_profile(profile, one).read_text()
    second = write_profile(again, two).read_text()
    assert json.loads(first)["features"] == json.loads(second)["features"]
    assert write_profile(build_profile(tmp_path / "ref.csv"), two).read_text() == first
    kinds = {f.name: f.kind for f in read_profile(one / "flywheel-reference-profile.json").features}
    assert kinds == {"x": "numeric", "y": "numeric", "colour": "categorical"}
    (x, _, colour) = profile.features
    assert isinstance(x, NumericFeature) and len(x.shares) == 10 and sum(x.shares) == pytest.approx(1)
    assert isinstance(colour, CategoricalFeature) and sum(colour.counts.values()) == 3000


def test_integer_labels_are_categories_and_bad_references_say_where(tmp_path: Path) -> None:
    path = flywheel_reference.write([[1.5, 2], [2.5, 0], [0.5, 1]], ["a", "b"], path=tmp_path / "ref.csv")
    assert path is not None
    assert [f.kind for f in build_profile(path).features] == ["numeric", "categorical"]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ProfileError, match=r"bad.csv:3: 1 values, the header names 2"):
        build_profile(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ProfileError, match=r"bad.jsonl:2: not JSON"):
        build_profile(tmp_path / "bad.jsonl")
    with pytest.raises(ProfileError, match="no rows"):
        (tmp_path / "empty.csv").write_text("a,b\n")
        build_profile(tmp_path / "empty.csv")


# ------------------------------------------------------------------ statistics


def test_a_shifted_feature_drifts_and_the_others_do_not(tmp_path: Path) -> None:
    profile = _reference(tmp_path)
    results = {r.feature: r for r in evaluate(profile.features, _columns(_live(800, 1, shift=1.0)), SETTINGS)}
    assert results["y"].status == "drift"
    assert results["y"].psi is not None and results["y"].psi > 2 * SETTINGS.psi_alert
    assert results["y"].p_value is not None and results["y"].p_value < 1e-10
    for name in ("x", "colour"):
        assert results[name].status == "stable", results[name]
        assert results[name].psi is not None and results[name].psi < SETTINGS.psi_warn / 2
    assert [r.threshold for r in results.values()] == [pytest.approx(SETTINGS.p_value / 3)] * 3


def test_a_changed_category_mix_drifts_by_chi_square(tmp_path: Path) -> None:
    profile = _reference(tmp_path)
    live = _columns(_live(800, 4, colours=(0.3, 0.3, 0.4)))
    (colour,) = [r for r in evaluate(profile.features, live, SETTINGS) if r.feature == "colour"]
    assert (colour.status, colour.test) == ("drift", "chi2")
    assert colour.p_value is not None and colour.p_value < 1e-10


def test_the_training_distribution_drifts_nothing_beyond_the_family_wise_rate(tmp_path: Path) -> None:
    """Windows from the reference's distribution: PSI stays low, and the tests' false alarms stay at or
    below the family-wise p-value (0.05: about 2 of 40 windows; the bound leaves a wide margin)."""
    profile = _reference(tmp_path)
    alarms = 0
    for seed in range(100, 140):
        results = evaluate(profile.features, _columns(_live(800, seed)), SETTINGS)
        assert all(r.psi is not None and r.psi < SETTINGS.psi_warn for r in results), (seed, results)
        alarms += any(r.drifted for r in results)
    assert alarms <= 6


def test_too_few_rows_is_not_enough_data_never_no_drift(tmp_path: Path) -> None:
    profile = _reference(tmp_path)
    results = evaluate(profile.features, _columns(_live(SETTINGS.min_samples - 1, 8, shift=5.0)), SETTINGS)
    assert {r.status for r in results} == {"not enough data"}
    assert all(r.psi is None and r.p_value is None and not r.drifted for r in results)


# ------------------------------------------------------------------ windows


def test_a_window_keeps_a_bounded_sample_and_counts_every_row(tmp_path: Path) -> None:
    monitor = VersionMonitor(_reference(tmp_path), SETTINGS, now=0.0)
    for seed in range(5):
        monitor.add(_live(1000, 10 + seed), None, now=1.0)
    report = monitor.report(now=2.0)
    assert report.rows == 5000
    assert {f.samples for f in report.features} == {SETTINGS.sample_size}


def test_sustained_drift_counts_windows_in_a_row_and_a_quiet_window_ends_it(tmp_path: Path) -> None:
    monitor = VersionMonitor(_reference(tmp_path), SETTINGS, now=0.0)
    monitor.add(_live(400, 20, shift=1.0), None, now=10.0)
    first = monitor.report(now=20.0)
    assert first.sustained["y"] == 1 and not first.sustained_drift("y")
    monitor.add(_live(400, 21, shift=1.0), None, now=70.0)  # the second window
    second = monitor.report(now=80.0)
    assert second.window == "current" and second.sustained["y"] == 2 and second.sustained_drift("y")
    assert second.sustained["x"] == 0
    monitor.add(_live(50, 22, shift=1.0), None, now=130.0)  # third window: too few rows yet
    third = monitor.report(now=131.0)
    assert third.window == "previous" and third.rows == 400 and third.sustained_drift("y")
    monitor.add(_live(400, 23, shift=1.0), None, now=300.0)  # windows 4 and 5 had no traffic
    after_gap = monitor.report(now=301.0)
    assert after_gap.sustained["y"] == 1


def test_the_features_setting_limits_what_is_tested(tmp_path: Path) -> None:
    settings = DriftMonitoring(min_samples=200, features=("y",))
    monitor = VersionMonitor(_reference(tmp_path), settings, now=0.0)
    monitor.add(_live(300, 30, shift=1.0), None, now=1.0)
    (only,) = monitor.report(now=2.0).features
    assert (only.feature, only.status, only.threshold) == ("y", "drift", pytest.approx(0.05))


# ------------------------------------------------------------------ spec and wire format


def _model_yaml(drift: str) -> dict[str, bytes]:
    root = Path(__file__).resolve().parent.parent
    files = {str(p.relative_to(root)): p.read_bytes() for p in (root / "policies").glob("*.yaml")}
    text = (root / "specs/iris/model.yaml").read_text()
    text = text.replace("  serving:\n    runtime: sklearn\n", f"  serving:\n    runtime: sklearn\n{drift}")
    files["specs/iris/model.yaml"] = text.encode()
    for name in ("staging", "production"):
        files[f"environments/{name}.yaml"] = (root / f"environments/{name}.yaml").read_bytes()
    return files


def test_serving_drift_parses_with_defaults_and_refuses_bands_out_of_order() -> None:
    catalog = load_catalog(_model_yaml("    drift:\n      minSamples: 100\n      window: 10m\n"))
    assert catalog.errors == ()
    drift = catalog.models["iris"].serving.drift
    assert drift == DriftMonitoring(min_samples=100, window_seconds=600.0)
    assert DriftMonitoring.from_json(drift.to_json()) == drift
    bad = load_catalog(_model_yaml("    drift:\n      psi: {warn: 0.3, alert: 0.2}\n"))
    assert [str(e).split(": ", 1)[1] for e in bad.errors] == [
        "spec.serving.drift.psi: warn (0.3) must be below alert (0.2)"
    ]


def test_oip_inputs_become_one_row_per_instance() -> None:
    single = [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]
    assert instance_rows(single) == [[1, 2, 3], [4, 5, 6]]
    nested = [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3, 4]]}]
    assert instance_rows(nested) == [[1, 2], [3, 4]]
    side_by_side = [
        {"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
        {"name": "b", "shape": [2, 1], "datatype": "BYTES", "data": ["u", "v"]},
    ]
    assert instance_rows(side_by_side) == [[1, "u"], [2, "v"]]
    assert instance_rows([{"name": "x", "shape": [3], "data": [1, 2]}]) is None
    assert instance_rows("nope") is None

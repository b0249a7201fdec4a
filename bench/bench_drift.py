"""Drift of 100,000 live rows x 20 features against a reference: Flywheel beside Evidently's preset.

Usage: python bench/bench_drift.py [--rows N] [--features F] [--repeat R] [--no-evidently]
                                   [--evidently-venv DIR]

Generates one reference table and one live table (N rows each, default
100,000; F features, default 20, of which a fifth are categorical; a quarter
of the features shifted in the live table) with a fixed seed and saves them
under a temporary directory. Flywheel's figure is :func:`controller.drift.evaluate`
on the live table against the reference's profile (the per-window work the
router does; building the profile, done once per trained version, is timed
apart). Evidently's figure is ``Report([DataDriftPreset()])`` run on the same
data as pandas DataFrames, in a virtualenv of its own that this script
creates under the temporary directory with ``python -m venv`` and ``pip``
(Evidently is never installed in Flywheel's environment; ``--evidently-venv DIR``
keeps that virtualenv in DIR and reuses it on the next run); when it cannot be
installed the script says why and prints Flywheel's figure alone. Each figure
is the median of R runs (default 3), in wall-clock and CPU seconds. Goal:
Flywheel at least 10x faster. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.drift import build_profile, evaluate
from controller.specs.types import DriftMonitoring
from controller.steplib import flywheel_reference

EVIDENTLY_SCRIPT = r'''
import json, sys, time
import numpy as np
import pandas as pd

data, repeat = sys.argv[1], int(sys.argv[2])
meta = json.load(open(f"{data}/meta.json"))
def frame(name):
    numeric = np.load(f"{data}/{name}-numeric.npy")
    categorical = np.load(f"{data}/{name}-categorical.npy", allow_pickle=False)
    df = pd.DataFrame(numeric, columns=meta["numeric"])
    for i, column in enumerate(meta["categorical"]):
        df[column] = categorical[:, i]
    return df
reference, current = frame("reference"), frame("live")
try:  # Evidently 0.7 and later
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    definition = DataDefinition(numerical_columns=meta["numeric"], categorical_columns=meta["categorical"])
    def run():
        report = Report([DataDriftPreset()])
        ref = Dataset.from_pandas(reference, data_definition=definition)
        cur = Dataset.from_pandas(current, data_definition=definition)
        return report.run(cur, ref)
except ImportError:  # Evidently 0.4 - 0.6
    from evidently import ColumnMapping
    from evidently.metric_preset import DataDriftPreset
    from evidently.report import Report
    mapping = ColumnMapping(numerical_features=meta["numeric"], categorical_features=meta["categorical"])
    def run():
        report = Report(metrics=[DataDriftPreset()])
        report.run(reference_data=reference, current_data=current, column_mapping=mapping)
        return report
import evidently
walls, cpus = [], []
for _ in range(repeat):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
print(json.dumps({"version": evidently.__version__, "wall": walls, "cpu": cpus}))
'''


def make_data(directory: Path, rows: int, features: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(42)
    n_categorical = max(1, features // 5)
    numeric = [f"num_{i}" for i in range(features - n_categorical)]
    categorical = [f"cat_{i}" for i in range(n_categorical)]
    shifted = set(range(0, features, 4))  # every fourth feature drifts
    for name, live in (("reference", False), ("live", True)):
        values = rng.normal(size=(rows, len(numeric)))
        labels = rng.choice(
            np.array(["a", "b", "c", "d"]), size=(rows, n_categorical), p=[0.4, 0.3, 0.2, 0.1]
        )
        if live:
            for index in shifted:
                if index < len(numeric):
                    values[:, index] += 0.3
                else:
                    column = index - len(numeric)
                    labels[:, column] = rng.choice(np.array(["a", "b", "c", "d"]), size=rows,
                                                   p=[0.25, 0.25, 0.25, 0.25])
        np.save(directory / f"{name}-numeric.npy", values)
        np.save(directory / f"{name}-categorical.npy", labels.astype("U1"))
    meta = {"numeric": numeric, "categorical": categorical}
    (directory / "meta.json").write_text(json.dumps(meta))
    return meta


def time_flywheel(directory: Path, meta: dict[str, list[str]], repeat: int) -> tuple[dict[str, float], int]:
    columns = [*meta["numeric"], *meta["categorical"]]
    ref_numeric = np.load(directory / "reference-numeric.npy")
    ref_labels = np.load(directory / "reference-categorical.npy")
    table = [[*a, *b] for a, b in zip(ref_numeric.tolist(), ref_labels.tolist(), strict=True)]
    reference = flywheel_reference.write(table, columns, limit=len(table), path=directory / "reference.csv")
    assert reference is not None
    started = time.perf_counter()
    profile = build_profile(reference)
    profile_seconds = time.perf_counter() - started
    live_numeric = np.load(directory / "live-numeric.npy")
    live_labels = np.load(directory / "live-categorical.npy")
    live: dict[str, object] = {name: live_numeric[:, i] for i, name in enumerate(meta["numeric"])}
    live.update({name: live_labels[:, i].tolist() for i, name in enumerate(meta["categorical"])})
    settings = DriftMonitoring()
    walls, cpus = [], []
    drifted = 0
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        results = evaluate(profile.features, live, settings)  # type: ignore[arg-type]
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        drifted = sum(r.drifted for r in results)
    figures = {"profile": profile_seconds, "wall": statistics.median(walls), "cpu": statistics.median(cpus)}
    return figures, drifted


def time_evidently(directory: Path, repeat: int, venv: Path) -> dict[str, object]:
    python = venv / "bin" / "python"
    has_it = python.exists() and subprocess.run(
        [str(python), "-c", "import evidently, pandas"], capture_output=True
    ).returncode == 0
    if has_it:
        print(f"Evidently from {venv}", flush=True)
    else:
        print(f"installing Evidently into {venv} (python -m venv, pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = subprocess.run(
            # Evidently 0.7 imports a helper that pandas 3 removed.
            [str(python), "-m", "pip", "install", "-q", "evidently", "pandas<3"],
            capture_output=True, text=True,
        )
    if not has_it and install.returncode != 0:
        why = (install.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"pip could not install Evidently: {why}")
    script = directory / "evidently_bench.py"
    script.write_text(EVIDENTLY_SCRIPT)
    argv = [str(python), str(script), str(directory), str(repeat)]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError("Evidently's run failed: " + (run.stderr.strip().splitlines() or ["?"])[-1])
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true", help="Flywheel's figure only")
    parser.add_argument("--evidently-venv", type=Path, default=None,
                        help="Evidently's virtualenv: created here if missing, reused if present")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-drift-") as tmp:
        directory = Path(tmp)
        meta = make_data(directory, args.rows, args.features)
        print(f"{args.rows:,} live rows x {args.features} features ({len(meta['categorical'])} categorical) "
              f"against a reference of {args.rows:,} rows")
        flywheel, drifted = time_flywheel(directory, meta, args.repeat)
        print(f"flywheel:  drift of all features {flywheel['wall']:.3f} s wall, {flywheel['cpu']:.3f} s CPU "
              f"(median of {args.repeat}); {drifted} features drifted; profile built once in "
              f"{flywheel['profile']:.2f} s")
        if args.no_evidently:
            return 0
        try:
            venv = args.evidently_venv or directory / "evidently-venv"
            evidently = time_evidently(directory, args.repeat, venv.absolute())
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"evidently: not measured: {exc}")
            return 0
        wall = statistics.median(evidently["wall"])  # type: ignore[arg-type]
        cpu = statistics.median(evidently["cpu"])  # type: ignore[arg-type]
        print(f"evidently {evidently['version']}: DataDriftPreset {wall:.3f} s wall, {cpu:.3f} s CPU "
              f"(median of {args.repeat})")
        ratio = wall / flywheel["wall"]
        verdict = "meets" if ratio >= 10 else "misses"
        print(f"flywheel is {ratio:.1f}x faster (wall clock; {cpu / flywheel['cpu']:.1f}x in CPU): "
              f"{verdict} the goal of 10x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

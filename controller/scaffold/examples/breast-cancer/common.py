"""Helpers for the breast-cancer steps: the Flywheel step contract, read from the environment."""

import json
import os
from pathlib import Path


def params() -> dict:
    return json.loads(Path(os.environ["FLYWHEEL_PARAMS"]).read_text())


def model_dir() -> Path:
    path = Path(os.environ["FLYWHEEL_MODEL_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def workdir() -> Path:
    return Path(os.environ["FLYWHEEL_WORKDIR"])


def write_metrics(values: dict) -> None:
    """Merge ``values`` into the run's metrics file."""
    path = Path(os.environ["FLYWHEEL_METRICS"])
    current = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    current.update({k: float(v) for k, v in values.items()})
    path.write_text(json.dumps(current, indent=2))


def load_dataset():
    """The data input named ``wdbc``: ``sklearn://breast_cancer`` loads the copy shipped with scikit-learn."""
    from sklearn import datasets

    uri = os.environ.get("FLYWHEEL_DATA_WDBC", "sklearn://breast_cancer")
    if uri != "sklearn://breast_cancer":
        raise SystemExit(f"unsupported data URI for wdbc: {uri}")
    return datasets.load_breast_cancer(return_X_y=True)

"""Write a train step's reference data: a sample of its training inputs, in serving order.

Model code calls ``flywheel_reference.write(rows, columns, predictions=...)``
in its train step. The module uses the standard library only: the local
runner puts its directory on the step's ``PYTHONPATH``, so a model's own
virtualenv needs nothing installed to import it. It writes a CSV file with a
header to the path in ``FLYWHEEL_REFERENCE_DATA`` (and does nothing when
that is not set, e.g. when the script runs by hand). Flywheel profiles that
file for drift monitoring (``controller.drift.profile``).

``rows`` are the training inputs exactly as the model receives them when
served (one value per column, in the order of the served input tensor);
``predictions``, if given, are the model's predictions on those rows and
become the ``__prediction__`` column. At most ``limit`` rows are kept, chosen
with a fixed seed, so the same training data gives the same file.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ENV", "PREDICTION", "write"]

ENV = "FLYWHEEL_REFERENCE_DATA"
PREDICTION = "__prediction__"


def write(
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str],
    *,
    predictions: Iterable[Any] | None = None,
    limit: int = 10_000,
    path: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Write the reference sample; returns its path, or None when there is nowhere to write it."""
    target = path if path is not None else os.environ.get(ENV)
    if not target:
        return None
    table = [[_plain(v) for v in row] for row in rows]
    header = [str(c) for c in columns]
    for number, row in enumerate(table):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} values; columns name {len(header)}")
    if predictions is not None:
        predicted = [_plain(p) for p in predictions]
        if len(predicted) != len(table):
            raise ValueError(f"{len(predicted)} predictions for {len(table)} rows")
        table = [[*row, p] for row, p in zip(table, predicted, strict=True)]
        header.append(PREDICTION)
    if len(table) > limit:
        keep = sorted(random.Random(0).sample(range(len(table)), limit))
        table = [table[i] for i in keep]
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (and anything with ``item()``) as plain Python values."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value

"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(".flywheel"),
        show_default=True,
        envvar="FLYWHEEL_STATE_DIR",
        help="Where Flywheel keeps its state (SQLite database, runs, virtualenvs).",
    )(func)


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30s``, ``10m``, ``1h30m`` or ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total, number = 0.0, ""
    for char in text.strip():
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise click.BadParameter(f"{text!r} is not a duration like 30s, 10m, 1h30m or 7d")
    if number or total <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 10m, 1h30m or 7d")
    return total

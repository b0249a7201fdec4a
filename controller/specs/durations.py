"""Durations as the specs write them (``30s``, ``10m``, ``1h30m``, ``72h``), in seconds.

The schemas' ``duration`` pattern decides what is valid; :func:`parse_duration`
only converts an already-valid string. Called by :mod:`controller.specs.build`.
"""

from __future__ import annotations

import re
from functools import lru_cache

_PART = re.compile(r"([0-9]+)([hms])")
_SECONDS = {"h": 3600, "m": 60, "s": 1}


@lru_cache(maxsize=1024)  # specs repeat the same few durations; this runs once per step and canary
def parse_duration(text: str) -> float:
    """Seconds in a duration like ``1h30m``; raise ``ValueError`` if it is not one."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return float(sum(int(n) * _SECONDS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """The shortest spec spelling of a whole number of seconds: 5400 → ``1h30m``."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"

"""Sleep without ``clock_nanosleep`` when Debian's faketime runs the test suite.

``.ci/run`` runs the suite a second time with the system clock three years
ahead (``faketime -f +3y``, with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` so that
timeouts on the monotonic clock keep working). Under libfaketime 0.9.10,
CPython 3.11's ``time.sleep`` then fails with ``EINVAL``: it sleeps with
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)``, and libfaketime
shifts that absolute deadline by the fake offset although it leaves the
monotonic clock alone. For that pass ``.ci/run`` puts this directory on the
test virtualenv's path (a ``.pth`` file), so every Python process started
from it sleeps with ``select()`` instead, which takes a relative timeout.
Nothing else changes, and nothing at all when libfaketime is not loaded.
"""

from __future__ import annotations

import os

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    import select
    import time

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = _sleep

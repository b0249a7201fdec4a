"""One clock: no module of Flywheel reads the wall clock on its own, and the fake clock moves everything.

The suite once failed by the calendar: a test drove the rollout engine on a
fake clock while the store stamped the outbox with the real date, so a
message never became due once the real date passed the fake one. These
tests pin the rule that fixed it: every wall-clock reading goes through an
injected :class:`~controller.clock.Clock`.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.clock import SYSTEM_CLOCK, FakeClock

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "webhooks")
ALLOWED = {ROOT / "controller" / "clock.py"}

# (module, function) pairs that read the wall clock; the int is how many positional
# arguments make the call *not* read it (time.strftime(fmt, t) formats t; strftime(fmt) reads now).
_WALL_CLOCK_READS: dict[tuple[str, str], int | None] = {
    ("datetime", "now"): None,
    ("datetime", "utcnow"): None,
    ("datetime", "today"): None,
    ("date", "today"): None,
    ("time", "time"): None,
    ("time", "time_ns"): None,
    ("time", "localtime"): 1,
    ("time", "gmtime"): 1,
    ("time", "ctime"): 1,
    ("time", "asctime"): 1,
    ("time", "strftime"): 2,
}


def _wall_clock_reads(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        key = (str(name), node.func.attr)
        if key not in _WALL_CLOCK_READS:
            continue
        harmless_from = _WALL_CLOCK_READS[key]
        if harmless_from is not None and len(node.args) >= harmless_from:
            continue
        found.append(f"{path.relative_to(root)}:{node.lineno}: {name}.{node.func.attr}()")
    return found


def test_no_module_reads_the_wall_clock_on_its_own() -> None:
    offenders = [
        read
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in ALLOWED and "scaffold/template" not in path.as_posix()
        for read in _wall_clock_reads(path)
    ]
    assert offenders == [], "read the time from the injected Clock instead:\n" + "\n".join(offenders)


def test_the_checker_finds_each_kind_of_wall_clock_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time, datetime as dt\n"
        "from datetime import datetime, date\n"
        "a = datetime.now()\n"
        "b = dt.datetime.utcnow()\n"
        "c = time.time()\n"
        "d = date.today()\n"
        "e = time.strftime('%H')\n"
        "f = time.strftime('%H', time.gmtime(0))\n"  # formats a given time: fine
        "g = time.monotonic()\n"  # elapsed time, not the wall clock: fine
    )
    reads = _wall_clock_reads(sample, tmp_path)
    assert [r.split(": ", 1)[1] for r in reads] == [
        "datetime.now()",
        "datetime.utcnow()",
        "time.time()",
        "date.today()",
        "time.strftime()",
    ]


def test_fake_clock_moves_wall_and_monotonic_time_together() -> None:
    clock = FakeClock(datetime(2026, 11, 21, 9, 0, tzinfo=UTC))
    start_wall, start_mono = clock.now(), clock.monotonic()
    assert clock.advance(90) == start_wall + timedelta(seconds=90)
    assert clock.monotonic() - start_mono == 90
    assert clock.timestamp() == (start_wall + timedelta(seconds=90)).timestamp()
    clock.advance(minutes=1)
    assert clock.now() == start_wall + timedelta(seconds=150)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))


def test_system_clock_is_aware_utc() -> None:
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs(now.timestamp() - SYSTEM_CLOCK.timestamp()) < 5

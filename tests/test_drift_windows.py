"""Live drift windows survive a restart of the router that keeps them.

Pinned down, with the router's drift watch driven by a hand-moved clock:

* a window that closes is written to ``drift-windows/<model>/<version>.json``
  beside the watch's ``drift.json``, and a watch started again on the same
  files reports the same sustained streak (the controller's drift trigger
  sees the same episode after a router restart);
* the open window's sample is written when the router stops
  (``save_windows(include_open=True)``) and goes on after the restart; time
  that passed while it was down (the wall clock) closes it then;
* a monitor restored under another monotonic clock (a reboot) places the
  windows by the wall-clock time that passed; windows of another width are
  dropped; a torn file starts the windows afresh; forgetting a version
  removes its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.backends.serving.drift_watch import DriftWatch
from controller.drift import VersionMonitor
from controller.drift.profile import write_profile
from controller.specs.types import DriftMonitoring
from tests.test_drift import SETTINGS, _live, _reference

pytestmark = pytest.mark.unit


class Clocks:
    """A monotonic clock and a wall clock that move together, unless a reboot resets the first."""

    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def _body(rows: list[list]) -> bytes:
    return json.dumps({"inputs": [
        {"name": "x", "shape": [len(rows), 2], "datatype": "FP64", "data": [r[:2] for r in rows]},
        {"name": "c", "shape": [len(rows), 1], "datatype": "BYTES", "data": [[r[2]] for r in rows]},
    ]}).encode()


def _watch(tmp_path: Path, clocks: Clocks) -> DriftWatch:
    return DriftWatch(environment="production", state_file=tmp_path / "drift.json",
                      now=lambda: clocks.mono, wall=lambda: clocks.wall)


def _entry(tmp_path: Path) -> dict[str, object]:
    profile_dir = tmp_path / "artifact"
    if not profile_dir.exists():
        profile_dir.mkdir()
        write_profile(_reference(tmp_path), profile_dir)
    return {"profile": str(profile_dir / "flywheel-reference-profile.json"), "settings": SETTINGS.to_json()}


def _version(watch: DriftWatch) -> dict[str, object]:
    (version,) = watch.to_json("m")["versions"]
    return version  # type: ignore[no-any-return]


def _streak(version: dict[str, object], feature: str = "y") -> int:
    rows = version["features"]
    assert isinstance(rows, list)
    return int(next(r["sustained_windows"] for r in rows if r["feature"] == feature))


def test_closed_windows_are_written_and_a_restarted_watch_reports_the_same_streak(tmp_path: Path) -> None:
    clocks = Clocks()
    watch = _watch(tmp_path, clocks)
    watch.watch("m", "v1", _entry(tmp_path))
    watch.observe("m", "v1", _body(_live(400, 1, shift=1.0)), b"")
    clocks.advance(SETTINGS.window_seconds)
    watch.observe("m", "v1", _body(_live(400, 2, shift=1.0)), b"")  # closes the first window: saved
    saved = tmp_path / "drift-windows" / "m" / "v1.json"
    assert saved.exists()
    before = _version(watch)
    assert _streak(before) == 2

    restarted = _watch(tmp_path, clocks)  # a crash: the open window's rows are lost, the closed one is not
    after = _version(restarted)
    assert after["window"] == "previous" and after["rows"] == 400 and _streak(after) == 1


def test_the_open_window_is_kept_at_shutdown_and_closes_when_its_time_passed(tmp_path: Path) -> None:
    clocks = Clocks()
    watch = _watch(tmp_path, clocks)
    watch.watch("m", "v1", _entry(tmp_path))
    watch.observe("m", "v1", _body(_live(400, 1, shift=1.0)), b"")
    clocks.advance(SETTINGS.window_seconds)
    watch.observe("m", "v1", _body(_live(300, 2, shift=1.0)), b"")
    watch.save_windows(include_open=True)  # the router stops

    clocks.advance(5)
    again = _version(_watch(tmp_path, clocks))
    assert again["window"] == "current" and again["rows"] == 300 and _streak(again) == 2

    clocks.advance(SETTINGS.window_seconds)  # down past the open window's end: it closed meanwhile
    later = _version(_watch(tmp_path, clocks))
    assert later["window"] == "previous" and later["rows"] == 300 and _streak(later) == 2


def test_a_reboot_places_the_windows_by_the_wall_clock(tmp_path: Path) -> None:
    clocks = Clocks()
    monitor = VersionMonitor(_reference(tmp_path), SETTINGS, now=clocks.mono)
    monitor.add(_live(300, 3, shift=1.0), None, now=clocks.mono + 10)
    state = monitor.to_state(now=clocks.mono + 20, include_open=True)
    rebooted = VersionMonitor(_reference(tmp_path), SETTINGS, now=5.0)
    rebooted.restore(state, now=5.0, elapsed=10.0)  # the open window started 30 s of wall time ago
    assert rebooted.report(now=5.0).rows == 300
    assert rebooted.report(now=5.0 + SETTINGS.window_seconds - 30 + 1).window == "previous"


def test_other_widths_are_dropped_a_torn_file_starts_afresh_and_forget_removes_it(tmp_path: Path) -> None:
    clocks = Clocks()
    monitor = VersionMonitor(_reference(tmp_path), SETTINGS, now=0.0)
    monitor.add(_live(300, 4, shift=1.0), None, now=1.0)
    wide = DriftMonitoring(min_samples=200, window_seconds=120)
    wider = VersionMonitor(_reference(tmp_path), wide, now=0.0)
    wider.restore(monitor.to_state(now=2.0, include_open=True), now=2.0, elapsed=0.0)
    assert wider.report(now=2.0).rows == 0

    watch = _watch(tmp_path, clocks)
    watch.watch("m", "v1", _entry(tmp_path))
    watch.save_windows(include_open=True)
    saved = tmp_path / "drift-windows" / "m" / "v1.json"
    saved.write_text("{torn")
    assert _version(_watch(tmp_path, clocks))["rows"] == 0
    watch.forget("m")
    assert not saved.exists()

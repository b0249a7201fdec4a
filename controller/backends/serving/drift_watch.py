"""The router's drift watch: samples served requests into each version's live windows and exports them.

The embedded router (:mod:`.router`) holds one :class:`DriftWatch`. The
controller tells it, per model version, where the version's reference
profile is and how to judge drift (``PUT /-/drift/{model}/{version}``, sent by
:meth:`.routers.Routers.watch_drift` when a version is deployed); the watch
keeps that in ``drift.json`` beside the router's routes, so a restarted
router watches the same versions. Their windows survive it too: each time a
version's window closes, the watch writes the closed windows' results to
``drift-windows/<model>/<version>.json`` beside it, and when the router stops
(:meth:`DriftWatch.save_windows`) the open window's sample as well; a
restarted router reads them back. These files are the router's own: the
controller reads drift through ``GET /-/drift`` and stays the only writer of
its store. For every
answered inference request of a watched version, the router hands the
request's and the answer's Open Inference Protocol bodies to
:meth:`DriftWatch.observe`: the input tensors give one row per instance (the
tensors side by side, in request order: the serving order of the
reference), the first output gives the predictions. :meth:`DriftWatch.collect`
exports the statistics as Prometheus gauges at the router's ``/metrics``, and
:meth:`DriftWatch.to_json` answers ``GET /-/drift``, which :func:`fetch_drift`
reads for ``flywheel drift``.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.backends.serving import ServingError
from controller.drift import ProfileError, VersionMonitor, read_profile
from controller.specs.types import DriftMonitoring

__all__ = ["DriftWatch", "fetch_drift", "instance_rows"]

log = logging.getLogger(__name__)
_LABELS = ["environment", "model", "version", "feature"]


class DriftWatch(Collector):
    """The live windows of every watched version of one environment."""

    def __init__(
        self,
        *,
        environment: str,
        state_file: Path,
        now: Callable[[], float],
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.environment = environment
        self.state_file = state_file
        self.windows_dir = state_file.with_name("drift-windows")
        self._now = now
        self._wall = wall or now  # wall-clock seconds: how long the saved windows waited
        self._watched: dict[tuple[str, str], dict[str, Any]] = {}
        self._monitors: dict[tuple[str, str], VersionMonitor] = {}
        self._saved: dict[tuple[str, str], int] = {}  # closed windows at the last save, per version
        for key, entry in _load(state_file).items():
            try:
                self._start(key, entry)
            except (ProfileError, ValueError, KeyError, TypeError) as exc:
                log.warning("not watching %s %s for drift: %s", key[0], key[1], exc)

    # ------------------------------------------------------------ admin

    def watch(self, model: str, version: str, entry: Any) -> None:
        """Watch ``version`` of ``model``: ``{"profile": path, "settings": {...}}`` (ValueError if bad)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("profile"), str):
            raise ValueError('expected {"profile": "<path of the reference profile>", "settings": {...}}')
        key = (model, version)
        if self._watched.get(key) == entry and key in self._monitors:
            return
        try:
            self._start(key, entry)
        except ProfileError as exc:
            raise ValueError(str(exc)) from exc
        self._save()

    def forget(self, model: str, versions: set[str] | None = None) -> None:
        """Stop watching these versions of ``model`` (all of them when None)."""
        for key in [k for k in self._watched if k[0] == model and (versions is None or k[1] in versions)]:
            self._watched.pop(key, None)
            self._monitors.pop(key, None)
            self._saved.pop(key, None)
            self._windows_file(key).unlink(missing_ok=True)
        self._save()

    def _start(self, key: tuple[str, str], entry: dict[str, Any]) -> None:
        settings = DriftMonitoring.from_json(entry.get("settings") or {})
        profile = read_profile(Path(entry["profile"]))
        monitor = VersionMonitor(profile, settings, now=self._now())
        try:
            saved = json.loads(self._windows_file(key).read_text())
            elapsed = max(0.0, self._wall() - float(saved["savedAt"]))
            monitor.restore(saved["windows"], now=self._now(), elapsed=elapsed)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:  # a torn or foreign file: start afresh
            log.warning("%s: not read (%s); the windows of %s %s start afresh", self._windows_file(key), exc,
                        *key)
            monitor = VersionMonitor(profile, settings, now=self._now())
        self._monitors[key] = monitor
        self._saved[key] = monitor.closed_windows
        self._watched[key] = entry

    def _windows_file(self, key: tuple[str, str]) -> Path:
        return self.windows_dir / key[0] / f"{key[1]}.json"

    def save_windows(self, *, include_open: bool = False) -> None:
        """Write the windows of every version whose window closed since the last save (all of them, with
        their open window's sample, when ``include_open``: the router stops)."""
        now, wall = self._now(), self._wall()
        for key, monitor in self._monitors.items():
            if not include_open and self._saved.get(key) == monitor.closed_windows:
                continue
            path = self._windows_file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            document = {"savedAt": wall, "windows": monitor.to_state(now=now, include_open=include_open)}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, path)
            self._saved[key] = monitor.closed_windows

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        document = {f"{m}/{v}": entry for (m, v), entry in sorted(self._watched.items())}
        tmp.write_text(json.dumps({"environment": self.environment, "watched": document}, indent=2))
        os.replace(tmp, self.state_file)

    # ------------------------------------------------------------- data

    def watches(self, model: str, version: str) -> bool:
        return (model, version) in self._monitors

    def versions(self) -> list[tuple[str, str]]:
        """The (model, version) pairs watched."""
        return sorted(self._monitors)

    def observe(self, model: str, version: str, request: bytes, answer: bytes) -> None:
        """Sample one answered inference request; bodies that are not OIP JSON are skipped."""
        monitor = self._monitors.get((model, version))
        if monitor is None:
            return
        try:
            rows = instance_rows(json.loads(request).get("inputs"))
            outputs = json.loads(answer).get("outputs") if answer else None
        except (ValueError, AttributeError, TypeError):
            return
        if rows is None or not rows or len(rows[0]) != monitor.width:
            return
        predictions = _predictions(outputs, len(rows))
        closed = monitor.closed_windows
        monitor.add(rows, predictions, now=self._now())
        if monitor.closed_windows != closed:
            self.save_windows()

    def to_json(self, model: str | None = None) -> dict[str, Any]:
        now = self._now()
        versions = []
        for (name, version), monitor in sorted(self._monitors.items()):
            if model is None or name == model:
                versions.append({"model": name, "version": version, **monitor.report(now=now).to_json()})
        self.save_windows()  # a report rolls windows that closed without traffic
        return {"environment": self.environment, "versions": versions}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        psi = GaugeMetricFamily("flywheel_drift_psi", "Population stability index of a feature's "
                                "latest window against the version's reference.", labels=_LABELS)
        p_value = GaugeMetricFamily("flywheel_drift_p_value", "p-value of the feature's two-sample test "
                                    "(test: ks or chi2) in its latest window.", labels=[*_LABELS, "test"])
        threshold = GaugeMetricFamily("flywheel_drift_p_value_threshold", "The p-value below which the "
                                      "test says drift (Bonferroni-corrected).", labels=_LABELS)
        samples = GaugeMetricFamily("flywheel_drift_samples", "Live values of the feature in its latest "
                                    "window.", labels=_LABELS)
        drifted = GaugeMetricFamily("flywheel_drift_drifted", "1 when the feature drifts in its latest "
                                    "window, 0 when it does not, NaN when the window has too few rows.",
                                    labels=_LABELS)
        sustained = GaugeMetricFamily("flywheel_drift_sustained_windows", "Windows in a row the feature has "
                                      "drifted.", labels=_LABELS)
        now = self._now()
        for (model, version), monitor in sorted(self._monitors.items()):
            report = monitor.report(now=now)
            for feature in report.features:
                labels = [self.environment, model, version, feature.feature]
                samples.add_metric(labels, feature.samples)
                threshold.add_metric(labels, feature.threshold)
                sustained.add_metric(labels, report.sustained.get(feature.feature, 0))
                if feature.status == "not enough data":
                    drifted.add_metric(labels, math.nan)
                    continue
                drifted.add_metric(labels, 1.0 if feature.drifted else 0.0)
                if feature.psi is not None:
                    psi.add_metric(labels, feature.psi)
                if feature.p_value is not None:
                    p_value.add_metric([*labels, feature.test], feature.p_value)
        yield from (psi, p_value, threshold, samples, drifted, sustained)


def instance_rows(inputs: Any) -> list[list[Any]] | None:
    """One row per instance from OIP ``inputs``: each tensor's values per instance, tensors side by side."""
    if not isinstance(inputs, list) or not inputs:
        return None
    rows: list[list[Any]] | None = None
    for tensor in inputs:
        shape, data = tensor.get("shape"), tensor.get("data")
        if not isinstance(shape, list) or not shape or not isinstance(data, list):
            return None
        flat = _flatten(data)
        count = int(shape[0])
        if count <= 0 or len(flat) % count:
            return None
        width = len(flat) // count
        parts = [flat[i * width:(i + 1) * width] for i in range(count)]
        if rows is None:
            rows = parts
        elif len(rows) == count:
            rows = [a + b for a, b in zip(rows, parts, strict=True)]
        else:
            return None
    return rows


def _predictions(outputs: Any, count: int) -> list[Any] | None:
    """The first output's value per instance, when it has exactly one per instance."""
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    data = outputs[0].get("data")
    if not isinstance(data, list):
        return None
    flat = _flatten(data)
    return flat if len(flat) == count else None


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _load(state_file: Path) -> dict[tuple[str, str], dict[str, Any]]:
    try:
        document = json.loads(state_file.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        log.warning("%s: not JSON (%s); watching nothing for drift until told again", state_file, exc)
        return {}
    watched = document.get("watched", {}) if isinstance(document, dict) else {}
    result = {}
    for key, entry in watched.items():
        model, _, version = str(key).partition("/")
        result[(model, version)] = entry
    return result


def fetch_drift(endpoint: str, model: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The drift table the router at ``endpoint`` reports for ``model`` (``GET /-/drift``)."""
    parsed = urllib.parse.urlsplit(endpoint)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    path = "/-/drift?" + urllib.parse.urlencode({"model": model})
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        raise ServingError(f"the router at {endpoint} did not answer GET /-/drift: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise ServingError(f"the router at {endpoint} refused GET /-/drift ({response.status}): {text[:200]}")
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ServingError(f"the router at {endpoint} answered GET /-/drift with {text[:200]}")
    return document

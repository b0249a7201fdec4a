"""Where the drift trigger reads a served model's drift: the version with the most traffic and its table.

The composition root (:mod:`controller.app`) gives the trigger engine
(:mod:`controller.engine.triggers`) a :class:`ServedDrift` over the serving
backends by name. On the embedded home the environment's router keeps the
live windows (:mod:`.drift_watch`): what it routes says which version serves,
and its ``GET /-/drift`` gives that version's table. An environment served by
a backend without windows of its own (KServe) reads the controller's own
windows, which :class:`ClusterDrift` keeps from the events KServe's inference
logger posts to the webhook service.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controller.backends.serving import ServingBackend, ServingError
from controller.backends.serving.drift_watch import DriftWatch
from controller.backends.serving.local import LocalServing
from controller.backends.store import InboxEvent
from controller.clock import Clock
from controller.drift import DriftReport
from controller.drift.logger import DRIFT_EVENT_KIND
from controller.specs.types import DriftMonitoring, Environment

__all__ = ["ClusterDrift", "ServedDrift", "serving_version"]


def serving_version(routes: Mapping[str, int]) -> str | None:
    """The version that gets the most traffic (the greater label on a tie); ``None`` when none gets any."""
    routed = [(weight, version) for version, weight in routes.items() if weight > 0]
    return max(routed)[1] if routed else None


class ServedDrift:
    """The drift trigger's :class:`~controller.engine.triggers.DriftReader`."""

    def __init__(self, backends: Mapping[str, ServingBackend], cluster: ClusterDrift | None = None) -> None:
        self.backends = backends
        self.cluster = cluster

    @classmethod
    def with_cluster(
        cls, backends: Mapping[str, ServingBackend], state_dir: Path, *, clock: Clock
    ) -> ServedDrift:
        """The reader the composition root builds: the routers' windows, and the controller's own under
        ``state_dir`` for the cluster's environments."""
        return cls(backends, ClusterDrift(state_dir, now=clock.monotonic, wall=clock.timestamp))

    def handlers(self) -> dict[str, Callable[[InboxEvent], None]]:
        """The inbox handler of the logger's events (:data:`~controller.drift.logger.DRIFT_EVENT_KIND`)."""
        return {DRIFT_EVENT_KIND: self.cluster.observe_event} if self.cluster is not None else {}

    def save(self) -> None:
        """Write the cluster's windows (the controller stops)."""
        if self.cluster is not None:
            self.cluster.save()

    def production(self, *, environment: Environment, model: str) -> tuple[str | None, DriftReport | None]:
        backend = self.backends.get(environment.serving_backend)
        if not isinstance(backend, LocalServing):
            if self.cluster is not None and environment.home == "cluster":
                return self.cluster.production(environment=environment, model=model)
            raise ServingError(
                f"environment {environment.name!r} is served by {environment.serving_backend!r}, whose live "
                "windows this controller does not read"
            )
        observed = backend.observe(environment=environment)
        if not observed.known:
            raise ServingError(f"what serves {environment.name} cannot be read: {observed.unknown}")
        version = serving_version(observed.routes.get(model, {}))
        if version is None:
            return None, None
        for entry in backend.drift(environment=environment, model=model).get("versions", []):
            if entry.get("version") == version:
                try:
                    return version, DriftReport.from_json(entry)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ServingError(f"the router of {environment.name} answered an unreadable drift "
                                       f"table for {model} {version}: {exc}") from exc
        return version, None


class ClusterDrift(Collector):
    """The live windows of the versions KServe serves, kept by the controller from the logger's events.

    The KServe backend calls :meth:`watch` when it deploys a version that has
    a reference profile (as the local backend tells its router). The inbox's
    consumer hands every ``drift.inference`` event (queued by the webhook
    service, :mod:`webhooks.drift`) to :meth:`observe_event`, which pairs a
    request with its answer by their CloudEvent id and adds the rows to the
    version's window; the answer's ``model_version`` names the version, else
    the one version of the model watched there. Each environment's windows
    are a :class:`~.drift_watch.DriftWatch` under ``state_dir/<environment>``
    (saved as the router saves its own), so they survive a restart of the
    controller. As a Prometheus collector it exports every environment's
    ``flywheel_drift_*`` gauges; ``flywheel serve`` registers it on the
    webhook service's ``/metrics`` (which scrapes it from the service's
    thread: a lock keeps the windows consistent).
    """

    def __init__(self, state_dir: Path, *, now: Callable[[], float], wall: Callable[[], float]) -> None:
        self.state_dir = state_dir
        self._now, self._wall = now, wall
        self._watches: dict[str, DriftWatch] = {}
        self._halves: OrderedDict[tuple[str, str, str], tuple[str, Any]] = OrderedDict()
        self._lock = threading.RLock()

    def environment(self, name: str) -> DriftWatch:
        watch = self._watches.get(name)
        if watch is None:
            watch = DriftWatch(environment=name, state_file=self.state_dir / name / "drift.json",
                               now=self._now, wall=self._wall)
            self._watches[name] = watch
        return watch

    def watch(self, *, environment: str, model: str, version: str, profile: Path, settings: DriftMonitoring
              ) -> None:
        """Watch ``version`` of ``model`` in ``environment`` against the reference profile at ``profile``."""
        with self._lock:
            self.environment(environment).watch(model, version, {"profile": str(profile),
                                                                 "settings": settings.to_json()})

    def observe_event(self, event: InboxEvent) -> None:
        """Add a request and its answer (two events, either first) to their version's window."""
        with self._lock:
            self._observe(event.payload)

    def _observe(self, payload: Any) -> None:
        model, environment = str(payload.get("model")), str(payload.get("environment"))
        key, part = (model, environment, str(payload.get("id"))), str(payload.get("part"))
        data = payload.get("data")
        other = self._halves.pop(key, None)
        if other is None or other[0] == part:
            self._halves[key] = (part, data)
            while len(self._halves) > _MAX_HALVES:  # an answer that never comes: forget the oldest
                self._halves.popitem(last=False)
            return
        request, answer = (data, other[1]) if part == "request" else (other[1], data)
        watch = self.environment(environment)
        version = answer.get("model_version") if isinstance(answer, dict) else None
        if not isinstance(version, str) or not watch.watches(model, version):
            watched = [v for m, v in watch.versions() if m == model]
            if len(watched) != 1:
                return  # not watched (no reference profile), or which version answered is unknown
            version = watched[0]
        watch.observe(model, version, json.dumps(request).encode(), json.dumps(answer).encode())

    def production(self, *, environment: Environment, model: str) -> tuple[str | None, DriftReport | None]:
        """The watched version of ``model`` with the most rows in its window, and its drift."""
        with self._lock:
            reports = list(self.environment(environment.name).to_json(model)["versions"])
        if not reports:
            return None, None
        chosen = max(reports, key=lambda r: (r["rows"], r["version"]))
        return str(chosen["version"]), DriftReport.from_json(chosen)

    def save(self) -> None:
        """Write every environment's windows with their open samples (the controller stops)."""
        with self._lock:
            for watch in self._watches.values():
                watch.save_windows(include_open=True)

    def collect(self) -> Iterator[Metric]:
        """Every environment's gauges, one family per name."""
        merged: dict[str, Metric] = {}
        with self._lock:
            for watch in self._watches.values():
                for family in watch.collect():
                    if family.name in merged:
                        merged[family.name].samples.extend(family.samples)
                    else:
                        merged[family.name] = family
        yield from merged.values()


_MAX_HALVES = 10_000

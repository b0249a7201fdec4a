"""The built-in metrics source: reads the router's own ``/metrics`` directly.

Used on the embedded home, where no Prometheus runs: the rollout engine asks
for a canary's success rate, request count or latency percentile, and this
module scrapes the environment's router and computes the answer itself from
the Prometheus text exposition (``flywheel_requests_total`` and the
``flywheel_request_duration_seconds`` histogram).

Counters are cumulative, so a window needs two scrapes. Every measurement
scrapes once and keeps the scrape, per environment, in a short history. The
answer is the increase from the newest kept scrape that is at least
``window_seconds`` old to the new one, summed scrape to scrape so that a
counter that went down (the router restarted) counts its new value, as
PromQL's ``increase`` does. When no kept scrape is old enough yet (the first
measurement after the controller started, or while the history is younger
than the window), the increase is counted from zero, that is since the router
started: the window is then longer than asked for, never shorter, and the
canary's first round is not held back for want of history.

PromQL checks (``AnalysisCheck.query``) cannot be answered here; they get a
measurement without a value that says they need a Prometheus source.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from prometheus_client.parser import text_string_to_metric_families

from controller.backends.metrics import (
    DEFAULT_PERCENTILE,
    NO_REQUESTS,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    Measurement,
)
from controller.specs.types import AnalysisCheck

PROMQL_NEEDS_PROMETHEUS = "PromQL checks need a Prometheus metrics source"

_Series = tuple[str, str]  # (model, version)


@dataclass(frozen=True)
class _Scrape:
    """What one scrape of one router said, keyed by model and version."""

    taken_at: float
    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (model, version, outcome)
    buckets: dict[_Series, dict[float, float]] = field(default_factory=dict)  # le -> cumulative count


_ROUTER_START = _Scrape(taken_at=-math.inf)  # every counter at zero


class BuiltinMetrics:
    """A :class:`~controller.backends.metrics.MetricsSource` over the routers' ``/metrics``.

    ``url_for_environment`` gives the router's metrics URL for an environment
    (a bare ``http://host:port`` gets ``/metrics`` appended); the composition
    root takes it from the local serving backend. ``clock`` is a
    monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        url_for_environment: Callable[[str], str],
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url_for_environment = url_for_environment
        self._timeout = timeout
        self._clock = clock
        self._history: dict[str, deque[_Scrape]] = defaultdict(deque)
        self._retention: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def measure(
        self, check: AnalysisCheck, *, model: str, version: str, environment: str, window_seconds: float
    ) -> Measurement:
        if check.query is not None or check.builtin is None:
            return Measurement.missing(PROMQL_NEEDS_PROMETHEUS)
        url = _metrics_url(self._url_for_environment(environment))
        try:
            text = self._fetch(url)
        except (OSError, ValueError) as err:  # URLError, HTTPError and timeouts are OSErrors
            return Measurement.missing(f"router metrics unreachable at {url}: {_describe(err)}")
        try:
            scrape = _parse(text, environment=environment, taken_at=self._clock())
        except ValueError as err:
            return Measurement.missing(f"router metrics at {url} could not be parsed: {err}")
        chain = self._record(environment, scrape, window_seconds)
        return _compute(check, chain, model=model, version=version)

    # ---------------------------------------------------------------- internals

    def _fetch(self, url: str) -> str:
        request = urllib.request.Request(url, headers={"Accept": "text/plain"})
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            body: bytes = response.read()
        return body.decode("utf-8")

    def _record(self, environment: str, scrape: _Scrape, window_seconds: float) -> list[_Scrape]:
        """Keep ``scrape`` and return the scrapes the window spans, oldest first."""
        with self._lock:
            history = self._history[environment]
            history.append(scrape)
            retention = max(self._retention[environment], window_seconds)
            self._retention[environment] = retention
            # Drop the oldest scrape once the next one is old enough to serve as a baseline.
            while len(history) >= 2 and history[1].taken_at <= scrape.taken_at - retention:
                history.popleft()
            scrapes = list(history)
        start = scrape.taken_at - window_seconds
        baselines = [i for i, s in enumerate(scrapes) if s.taken_at <= start]
        if baselines:
            return scrapes[baselines[-1] :]
        return [_ROUTER_START, *scrapes]


def _metrics_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/metrics"))
    return url


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _parse(text: str, *, environment: str, taken_at: float) -> _Scrape:
    scrape = _Scrape(taken_at=taken_at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("environment", environment) != environment:
                continue
            key = (labels.get("model", ""), labels.get("version", ""))
            if sample.name == REQUESTS_TOTAL:
                outcome = labels.get("outcome", "")
                scrape.requests[(*key, outcome)] = scrape.requests.get((*key, outcome), 0.0) + sample.value
            elif sample.name == f"{REQUEST_DURATION}_bucket" and "le" in labels:
                bound = float(labels["le"])
                series = scrape.buckets.setdefault(key, {})
                series[bound] = series.get(bound, 0.0) + sample.value
    return scrape


def _increase(values: Sequence[float]) -> float:
    """The increase of a counter over consecutive scrapes; a decrease is a restart from zero."""
    return sum(cur - prev if cur >= prev else cur for prev, cur in pairwise(values))


def _bucket_increase(chain: Sequence[dict[float, float]]) -> dict[float, float]:
    """The increase of a histogram's cumulative buckets; any decrease is a restart of the whole series."""
    total: dict[float, float] = defaultdict(float)
    for prev, cur in pairwise(chain):
        restarted = any(cur.get(bound, 0.0) < count for bound, count in prev.items())
        for bound, count in cur.items():
            total[bound] += count if restarted else count - prev.get(bound, 0.0)
    return dict(total)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0..1) from cumulative ``(upper bound, count)`` buckets, like PromQL's.

    Linear interpolation inside the bucket the rank falls in; the lowest bucket
    starts at 0; a rank in the ``+Inf`` bucket gives the highest finite bound.
    None when there is no ``+Inf`` bucket or no observation.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts must not go down across bounds; smooth over float noise as Prometheus does.
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next((i for i, c in enumerate(counts[:-1]) if c >= rank), len(counts) - 1)
    if index == len(counts) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, in_bucket = 0.0, bounds[index], counts[index]
    if index > 0:
        start = bounds[index - 1]
        in_bucket -= counts[index - 1]
        rank -= counts[index - 1]
    return start + (end - start) * (rank / in_bucket)


def _compute(check: AnalysisCheck, chain: Sequence[_Scrape], *, model: str, version: str) -> Measurement:
    latest = chain[-1]
    outcomes = {o for (m, v, o) in latest.requests if (m, v) == (model, version)}
    if not outcomes and (model, version) not in latest.buckets:
        return Measurement.missing(
            f"{NO_REQUESTS} (the router has no series for model {model!r} version {version!r})", samples=0
        )
    counts = {o: _increase([s.requests.get((model, version, o), 0.0) for s in chain]) for o in outcomes}
    total = sum(counts.values())
    requests = round(total)
    if check.builtin == "requestCount":
        return Measurement(value=total, samples=requests)
    if check.builtin == "successRate":
        if total <= 0:
            return Measurement.missing(NO_REQUESTS, samples=0)
        return Measurement(value=counts.get("success", 0.0) / total, samples=requests)
    if check.builtin == "latency":
        buckets = _bucket_increase([s.buckets.get((model, version), {}) for s in chain])
        percentile = check.percentile if check.percentile is not None else DEFAULT_PERCENTILE
        if not buckets:
            return Measurement.missing(
                f"the router has no latency histogram for model {model!r} version {version!r}"
            )
        observed = max(buckets.values())
        if observed <= 0:
            return Measurement.missing(NO_REQUESTS, samples=0)
        value = histogram_quantile(percentile / 100.0, buckets.items())
        if value is None:
            return Measurement.missing("the latency histogram has no +Inf bucket")
        return Measurement(value=value, samples=round(observed))
    return Measurement.missing(f"unknown builtin check {check.builtin!r}")

"""The built-in metrics source computes canary measurements from a router's ``/metrics``.

Runs ``BuiltinMetrics`` against a real HTTP server on loopback that serves a
Prometheus text exposition the test changes between scrapes, with a fake
clock for the window. Pins down:

- success rate and request count over a window are the increase from the
  newest scrape at least a window old; before there is one, since the router
  started;
- a latency percentile is interpolated from the histogram buckets like
  PromQL's ``histogram_quantile``;
- a counter that went down (the router restarted) counts its new value;
- a window without requests gives no success rate and no latency (the reason
  says so) and a request count of zero; a version the router never counted
  gives no value at all;
- an unreachable router and a PromQL check give no value, with the reason;
- the exposition ``prometheus_client`` itself writes is read correctly.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Mapping

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from controller.backends.metrics import NO_REQUESTS, Measurement
from controller.backends.metrics.builtin import (
    PROMQL_NEEDS_PROMETHEUS,
    BuiltinMetrics,
    histogram_quantile,
)
from controller.specs.types import AnalysisCheck

pytestmark = pytest.mark.integration
SUCCESS = AnalysisCheck(name="success-rate", builtin="successRate", min=0.99)
COUNT = AnalysisCheck(name="traffic", builtin="requestCount", min=20)
P99 = AnalysisCheck(name="p99", builtin="latency", percentile=99, max=0.5)
P95 = AnalysisCheck(name="p95", builtin="latency", percentile=95, max=0.5)
ENV = "production"


class Router:
    """A loopback HTTP server whose ``/metrics`` answers ``self.text``."""

    def __init__(self) -> None:
        self.text = ""
        self.scrapes = 0
        router = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                router.scrapes += 1
                body = router.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def router() -> Iterator[Router]:
    server = Router()
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exposition(
    requests: Mapping[tuple[str, str, str], float],
    buckets: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
    environment: str = ENV,
) -> str:
    """The router's exposition: request counts by (model, version, outcome), cumulative buckets by le."""
    lines = [
        "# HELP flywheel_requests_total Requests by outcome.",
        "# TYPE flywheel_requests_total counter",
    ]
    for (model, version, outcome), value in requests.items():
        labels = f'environment="{environment}",model="{model}",version="{version}",outcome="{outcome}"'
        lines.append(f"flywheel_requests_total{{{labels}}} {value}")
    lines += [
        "# HELP flywheel_request_duration_seconds Request latency.",
        "# TYPE flywheel_request_duration_seconds histogram",
    ]
    for (model, version), series in (buckets or {}).items():
        labels = f'environment="{environment}",model="{model}",version="{version}"'
        for le, count in series.items():
            lines.append(f'flywheel_request_duration_seconds_bucket{{{labels},le="{le}"}} {count}')
        lines.append(f"flywheel_request_duration_seconds_count{{{labels}}} {series['+Inf']}")
        lines.append(f"flywheel_request_duration_seconds_sum{{{labels}}} 1.0")
    return "\n".join(lines) + "\n"


def requests(success: float, error: float, version: str = "v2") -> dict[tuple[str, str, str], float]:
    return {("iris", version, "success"): success, ("iris", version, "error"): error}


def make_source(router: Router, clock: Clock) -> BuiltinMetrics:
    return BuiltinMetrics(lambda environment: router.url, clock=clock, timeout=2.0)


def measure(
    source: BuiltinMetrics, check: AnalysisCheck, version: str = "v2", window: float = 60.0
) -> Measurement:
    return source.measure(check, model="iris", version=version, environment=ENV, window_seconds=window)


def test_success_rate_and_request_count_over_a_window(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)

    router.text = exposition(requests(100, 0) | requests(7, 7, version="v1"))
    # No earlier scrape: counted since the router started.
    assert measure(source, COUNT).value == 100
    assert measure(source, SUCCESS).value == 1.0
    # Another version in the same exposition is counted apart.
    assert measure(source, COUNT, version="v1").value == 14

    clock.now += 30
    router.text = exposition(requests(190, 10))
    # Still no scrape a whole window old: since the router started, never a shorter window.
    rate = measure(source, SUCCESS)
    assert (rate.value, rate.samples) == (0.95, 200)

    clock.now += 40  # 70 s after the first scrape: it is the baseline now
    router.text = exposition(requests(280, 10))
    rate = measure(source, SUCCESS)
    assert rate.value == pytest.approx(180 / 190)
    assert rate.samples == 190
    assert measure(source, COUNT).value == 190
    # A shorter window starts from the newest scrape at least that old (the one at 30 s).
    assert measure(source, COUNT, window=30).value == 90


def test_latency_percentile_from_histogram_buckets(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)
    zero = {"0.1": 0, "0.25": 0, "0.5": 0, "1.0": 0, "+Inf": 0}
    before = {"0.1": 10, "0.25": 10, "0.5": 10, "1.0": 10, "+Inf": 10}
    router.text = exposition(requests(10, 0), {("iris", "v2"): before, ("iris", "v1"): zero})
    measure(source, P99)

    clock.now += 60
    # In the window: 50 requests ≤ 0.1 s, 40 in (0.1, 0.25], 9 in (0.25, 0.5], 1 in (0.5, 1].
    after = {"0.1": 60, "0.25": 100, "0.5": 109, "1.0": 110, "+Inf": 110}
    router.text = exposition(requests(110, 0), {("iris", "v2"): after, ("iris", "v1"): zero})
    p99 = measure(source, P99)
    assert p99.value == pytest.approx(0.5)  # rank 99 is the top of the (0.25, 0.5] bucket
    assert p99.samples == 100
    assert measure(source, P95).value == pytest.approx(0.25 + 0.25 * 5 / 9)
    median = AnalysisCheck(name="p50", builtin="latency", percentile=50, max=1)
    assert measure(source, median).value == pytest.approx(0.1)
    default = AnalysisCheck(name="p", builtin="latency", max=1)  # no percentile: the 99th
    assert measure(source, default).value == pytest.approx(0.5)


def test_histogram_quantile_matches_promql_at_the_edges() -> None:
    buckets = [(0.1, 5.0), (0.5, 10.0), (float("inf"), 20.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1 * 5 / 5)  # rank 5 tops the first bucket
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.04)  # the lowest bucket starts at 0
    assert histogram_quantile(0.99, buckets) == 0.5  # rank in +Inf: the highest finite bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3.0), (0.2, 3.0)]) is None  # no +Inf bucket


def test_a_counter_reset_counts_the_new_value(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)
    buckets = {"0.1": 1000, "0.5": 1000, "+Inf": 1000}
    router.text = exposition(requests(990, 10), {("iris", "v2"): buckets})
    measure(source, COUNT)

    clock.now += 60
    # The router restarted: its counters start again from zero.
    router.text = exposition(requests(27, 3), {("iris", "v2"): {"0.1": 10, "0.5": 30, "+Inf": 30}})
    assert measure(source, COUNT).value == 30
    assert measure(source, SUCCESS).value == pytest.approx(0.9)
    assert measure(source, P99).value == pytest.approx(0.1 + 0.4 * (29.7 - 10) / 20)


def test_a_reset_between_scrapes_inside_the_window_is_not_lost(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)
    router.text = exposition(requests(500, 0))
    measure(source, COUNT)
    clock.now += 20
    router.text = exposition(requests(600, 0))
    measure(source, COUNT)
    clock.now += 20
    router.text = exposition(requests(50, 0))  # restarted after serving 100 more
    measure(source, COUNT)
    clock.now += 20
    router.text = exposition(requests(700, 0))  # ... and climbed past the old value
    assert measure(source, COUNT).value == 100 + 50 + 650


def test_no_requests_in_the_window_is_no_data(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)
    histogram = {("iris", "v2"): {"0.1": 40, "+Inf": 40}}
    router.text = exposition(requests(40, 0), histogram)
    measure(source, SUCCESS)
    clock.now += 60
    # Same counters a minute later: nobody called the canary.
    rate = measure(source, SUCCESS)
    assert (rate.value, rate.samples, rate.reason) == (None, 0, NO_REQUESTS)
    assert measure(source, P99).reason == NO_REQUESTS
    assert measure(source, COUNT).value == 0  # a real count, which a requestCount bound judges


def test_a_version_the_router_never_counted_has_no_value(router: Router) -> None:
    source = make_source(router, Clock())
    router.text = exposition(requests(40, 0, version="v1"))
    for check in (SUCCESS, COUNT, P99):
        measurement = measure(source, check, version="v2")
        assert measurement.value is None
        assert NO_REQUESTS in measurement.reason
        assert "'v2'" in measurement.reason


def test_other_environments_are_ignored(router: Router) -> None:
    source = make_source(router, Clock())
    router.text = exposition(requests(40, 0), environment="staging")
    assert measure(source, COUNT).value is None


def test_an_unreachable_router_gives_no_value_with_the_reason() -> None:
    router = Router()
    router.stop()  # the port is now closed
    source = BuiltinMetrics(lambda environment: router.url.removesuffix("/metrics"), timeout=1.0)
    measurement = measure(source, SUCCESS)
    assert measurement.value is None
    assert measurement.reason.startswith(f"router metrics unreachable at {router.url}: ")


def test_a_broken_exposition_gives_no_value(router: Router) -> None:
    source = make_source(router, Clock())
    router.text = "flywheel_requests_total{model=iris 12 x y\n"
    measurement = measure(source, COUNT)
    assert measurement.value is None
    assert "could not be parsed" in measurement.reason


def test_promql_checks_need_prometheus(router: Router) -> None:
    source = make_source(router, Clock())
    check = AnalysisCheck(name="errors", query="sum(rate(x[1m]))", max=0.01)
    assert measure(source, check).reason == PROMQL_NEEDS_PROMETHEUS
    assert router.scrapes == 0


def test_history_is_kept_only_as_long_as_the_window_needs(router: Router) -> None:
    clock = Clock()
    source = make_source(router, clock)
    for i in range(200):
        router.text = exposition(requests(10 * i, 0))
        measure(source, COUNT, window=60)
        clock.now += 10
    history = source._history[ENV]
    assert 7 <= len(history) <= 8
    assert measure(source, COUNT, window=60).value == 1990 - 1940  # from the scrape 60 s before


def test_reads_the_exposition_prometheus_client_writes(router: Router) -> None:
    registry = CollectorRegistry()
    total = Counter(
        "flywheel_requests", "Requests.", ["environment", "model", "version", "outcome"], registry=registry
    )
    duration = Histogram(  # labelled by outcome too, as the router does
        "flywheel_request_duration_seconds",
        "Latency.",
        ["environment", "model", "version", "outcome"],
        registry=registry,
    )
    total.labels(ENV, "iris", "v2", "success").inc(97)
    total.labels(ENV, "iris", "v2", "error").inc(3)
    for _ in range(97):
        duration.labels(ENV, "iris", "v2", "success").observe(0.02)  # the (0.01, 0.025] default bucket
    for _ in range(3):
        duration.labels(ENV, "iris", "v2", "error").observe(0.2)  # the (0.1, 0.25] bucket
    router.text = generate_latest(registry).decode()

    source = make_source(router, Clock())
    assert measure(source, SUCCESS).value == pytest.approx(0.97)
    assert measure(source, COUNT).value == 100
    assert measure(source, P95).value == pytest.approx(0.01 + 0.015 * 95 / 97)
    assert measure(source, P99).value == pytest.approx(0.1 + 0.15 * 2 / 3)

"""The Prometheus metrics source answers analysis checks with PromQL against a real Prometheus.

Starts the real ``/usr/bin/prometheus`` on a free loopback port, scraping every
second a loopback target that serves ``flywheel_*`` metrics growing at rates
the test chooses, and drives ``PrometheusMetrics`` (through
``prometheus_api_client``) against it. Pins down:

- built-in checks (success rate, request count, latency percentile) give the
  values the target's rates imply;
- a check's own PromQL gets ``{{model}}``, ``{{version}}``, ``{{environment}}``
  and ``{{window}}`` filled in, and a hostile model name cannot inject PromQL;
- a version with no series, a version with series but no requests (0/0),
  a query returning several series and an invalid query each give no value
  with the reason;
- a stopped Prometheus gives no value with "unreachable", quickly.

Skipped, saying why, when the Prometheus binary is not installed; failed
instead with ``FLYWHEEL_TEST_REQUIRE_ALL`` (tests.fixtures.required). The
tests of the query rendering alone are unit tests.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from controller.backends.metrics import NO_REQUESTS, NO_SERIES, Measurement
from controller.backends.metrics.prometheus import (
    PrometheusMetrics,
    escape_label_value,
    promql_duration,
    render_query,
)
from controller.specs.types import AnalysisCheck
from tests.fixtures.required import program

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
Test = TypeVar("Test", bound=Callable[..., None])


def needs_prometheus(test: Test) -> Test:
    """An integration test against the real server: skipped without the binary (failed in CI)."""
    marked: Test = pytest.mark.integration(pytest.mark.usefixtures("prometheus_installed")(test))
    return marked


ENV = "production"
WINDOW = 5.0  # seconds; with a 1 s scrape interval, about five samples per series
SUCCESS = AnalysisCheck(name="success-rate", builtin="successRate", min=0.99)
COUNT = AnalysisCheck(name="traffic", builtin="requestCount", min=20)
P99 = AnalysisCheck(name="p99", builtin="latency", percentile=99, max=0.5)
P95 = AnalysisCheck(name="p95", builtin="latency", percentile=95, max=0.5)

# Per-second rates the target's counters grow at: iris v2 serves 99 successes
# and 1 error a second, with latencies in the buckets below; v0 is deployed
# but idle; v3 only fails; a second model has a series of its own.
REQUEST_RATES = {
    ("iris", "v2", "success"): 99.0,
    ("iris", "v2", "error"): 1.0,
    ("iris", "v0", "success"): 0.0,
    ("iris", "v3", "error"): 5.0,
    ("wine", "v2", "success"): 10.0,
}
BUCKET_RATES = {  # cumulative per second: 50 ≤ 0.1 s, 90 ≤ 0.25 s, 99 ≤ 0.5 s, all ≤ 1 s
    ("iris", "v2"): {"0.1": 50.0, "0.25": 90.0, "0.5": 99.0, "1.0": 100.0, "+Inf": 100.0},
    ("iris", "v0"): {"0.1": 0.0, "0.25": 0.0, "0.5": 0.0, "1.0": 0.0, "+Inf": 0.0},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Target:
    """A loopback router stand-in whose counters grow linearly from when it started."""

    def __init__(self) -> None:
        self.started = time.time()
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def exposition(self) -> str:
        elapsed = time.time() - self.started
        lines = ["# TYPE flywheel_requests_total counter"]
        for (model, version, outcome), rate in REQUEST_RATES.items():
            labels = f'environment="{ENV}",model="{model}",version="{version}",outcome="{outcome}"'
            lines.append(f"flywheel_requests_total{{{labels}}} {rate * elapsed}")
        lines.append("# TYPE flywheel_request_duration_seconds histogram")
        for (model, version), buckets in BUCKET_RATES.items():
            labels = f'environment="{ENV}",model="{model}",version="{version}"'
            for le, rate in buckets.items():
                lines.append(
                    f'flywheel_request_duration_seconds_bucket{{{labels},le="{le}"}} {rate * elapsed}'
                )
            lines.append(f"flywheel_request_duration_seconds_count{{{labels}}} {buckets['+Inf'] * elapsed}")
            lines.append(f"flywheel_request_duration_seconds_sum{{{labels}}} {0.1 * elapsed}")
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class PrometheusServer:
    """A real Prometheus on a free loopback port with its own config and storage."""

    def __init__(self, workdir: Path, *, scrape_target: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        targets = f"['{scrape_target}']" if scrape_target else "[]"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: flywheel\n"
            "    static_configs:\n"
            f"      - targets: {targets}\n"
        )
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> list[dict[str, object]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=2) as response:
            result: list[dict[str, object]] = json.load(response)["data"]["result"]
            return result

    def wait_until(self, ready: str, *, seconds: float = 20.0) -> None:
        """Poll until ``ready`` (PromQL) returns a series, or fail with Prometheus's log."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.query(ready):
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        self._log.flush()
        log = self.log_path.read_text(errors="replace")
        pytest.fail(f"Prometheus not ready after {seconds:g} s ({ready}):\n{log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def prometheus_installed() -> str:
    return program("prometheus")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    target = Target()
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_target=target.address)
    try:
        # Six scrapes of history: any WINDOW-long range is then full, and increase()
        # extrapolates over the whole of it. (Prometheus's first scrape comes ~5 s after start.)
        server.wait_until("count_over_time(flywheel_requests_total{version='v2',outcome='error'}[30s]) >= 6")
        yield server
    finally:
        server.stop()
        target.stop()


@pytest.fixture
def source(prometheus: PrometheusServer) -> Iterator[PrometheusMetrics]:
    with PrometheusMetrics(prometheus.url, timeout=5.0) as metrics:
        yield metrics


def measure(
    source: PrometheusMetrics, check: AnalysisCheck, model: str = "iris", version: str = "v2"
) -> Measurement:
    return source.measure(check, model=model, version=version, environment=ENV, window_seconds=WINDOW)


# ---------------------------------------------------------- without a server


@pytest.mark.unit
def test_label_values_are_escaped_and_quotes_that_cannot_be_are_refused() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    with pytest.raises(ValueError, match="quote"):
        escape_label_value("it's")
    with pytest.raises(ValueError, match="quote"):
        escape_label_value("a`b")


@pytest.mark.unit
def test_templates_are_filled_in() -> None:
    query = 'x{model="{{model}}",version="{{ version }}",environment="{{environment}}"}[{{window}}]'
    assert (
        render_query(query, model='m"', version="v", environment="e", window_seconds=90)
        == 'x{model="m\\"",version="v",environment="e"}[1m30s]'
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "duration"), [(60, "1m"), (15, "15s"), (3600, "1h"), (3725, "1h2m5s"), (1.5, "1500ms")]
)
def test_windows_become_promql_durations(seconds: float, duration: str) -> None:
    assert promql_duration(seconds) == duration


@pytest.mark.unit
def test_a_model_name_with_a_single_quote_gives_no_value() -> None:
    with PrometheusMetrics("http://127.0.0.1:9") as metrics:
        measurement = metrics.measure(SUCCESS, model="it's", version="v2", environment=ENV, window_seconds=60)
    assert measurement.value is None
    assert "cannot be escaped safely" in measurement.reason


# ---------------------------------------------------- against a real server


@needs_prometheus
def test_builtin_success_rate_and_request_count(source: PrometheusMetrics) -> None:
    rate = measure(source, SUCCESS)
    assert rate.value == pytest.approx(0.99)
    assert rate.samples == pytest.approx(100 * WINDOW, rel=0.25)
    count = measure(source, COUNT)
    assert count.value == pytest.approx(100 * WINDOW, rel=0.25)
    assert count.samples == round(count.value or 0)


@needs_prometheus
def test_a_version_that_only_fails_has_a_success_rate_of_zero(source: PrometheusMetrics) -> None:
    rate = measure(source, SUCCESS, version="v3")
    assert rate.value == 0.0
    assert rate.samples == pytest.approx(5 * WINDOW, rel=0.25)


@needs_prometheus
def test_builtin_latency_percentiles(source: PrometheusMetrics) -> None:
    p99 = measure(source, P99)
    assert p99.value == pytest.approx(0.5)
    assert p99.samples == pytest.approx(100 * WINDOW, rel=0.25)
    assert measure(source, P95).value == pytest.approx(0.25 + 0.25 * 5 / 9)


@needs_prometheus
def test_a_custom_query_is_templated(source: PrometheusMetrics) -> None:
    check = AnalysisCheck(
        name="error-ratio",
        query=(
            'sum(rate(flywheel_requests_total{model="{{model}}",version="{{version}}",'
            'environment="{{environment}}",outcome="error"}[{{window}}]))'
            ' / sum(rate(flywheel_requests_total{model="{{model}}",version="{{version}}"}[{{window}}]))'
        ),
        max=0.01,
    )
    measurement = measure(source, check)
    assert measurement.value == pytest.approx(0.01)
    assert measurement.samples is None


@needs_prometheus
def test_a_version_without_series_has_no_value(source: PrometheusMetrics) -> None:
    for check in (SUCCESS, COUNT, P99):
        measurement = measure(source, check, version="v9")
        assert (measurement.value, measurement.reason) == (None, NO_SERIES)


@needs_prometheus
def test_an_idle_version_has_no_rate_but_a_zero_count(source: PrometheusMetrics) -> None:
    rate = measure(source, SUCCESS, version="v0")
    assert (rate.value, rate.samples, rate.reason) == (None, 0, NO_REQUESTS)
    assert measure(source, P99, version="v0").reason == NO_REQUESTS
    assert measure(source, COUNT, version="v0").value == 0


@needs_prometheus
def test_a_hostile_model_name_cannot_inject_promql(source: PrometheusMetrics) -> None:
    hostile = 'iris"} or vector(42) or flywheel_requests_total{model="'
    check = AnalysisCheck(name="count", query='sum(flywheel_requests_total{model="{{model}}"})', min=1)
    measurement = measure(source, check, model=hostile)
    assert (measurement.value, measurement.reason) == (None, NO_SERIES)
    assert measure(source, COUNT, model=hostile).reason == NO_SERIES


@needs_prometheus
def test_several_series_is_not_one_number(source: PrometheusMetrics) -> None:
    check = AnalysisCheck(name="raw", query='flywheel_requests_total{model="{{model}}"}', min=0)
    measurement = measure(source, check)
    assert measurement.value is None
    assert measurement.reason == "query returned 4 series; it must return one"


@needs_prometheus
def test_an_invalid_query_fails_with_prometheus_reason(source: PrometheusMetrics) -> None:
    check = AnalysisCheck(name="broken", query="sum(rate(flywheel_requests_total[{{window}}]", max=1)
    measurement = measure(source, check)
    assert measurement.value is None
    assert measurement.reason.startswith("query failed: ")
    assert "parse error" in measurement.reason


@needs_prometheus
def test_a_scalar_query_is_one_number(source: PrometheusMetrics) -> None:
    assert measure(source, AnalysisCheck(name="s", query="scalar(vector(0.5))", max=1)).value == 0.5


@needs_prometheus
def test_a_stopped_prometheus_is_unreachable(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, scrape_target=None)
    try:
        server.wait_until("vector(1)")
        with PrometheusMetrics(server.url, timeout=2.0) as metrics:
            check = AnalysisCheck(name="one", query="vector(1)", min=1)
            before = metrics.measure(check, model="iris", version="v2", environment=ENV, window_seconds=60)
            assert before.value == 1
            server.stop()
            started = time.monotonic()
            after = metrics.measure(check, model="iris", version="v2", environment=ENV, window_seconds=60)
            assert time.monotonic() - started < 2.0
    finally:
        server.stop()
    assert after.value is None
    assert after.reason.startswith(f"Prometheus unreachable at {server.url}")

"""Canary analysis on KServe: built-in checks as PromQL over a revision's metrics, scraped by real Prometheus.

Pins down: with the revision serving a version looked up (and filled into a
check's own PromQL as ``{{revision}}``/``{{namespace}}``), the built-in
checks read the same on KServe as on one machine: a canary failing on part
of its inputs has a success rate below the stable version's, which has all
its answers right; the request count counts the canary's requests; the
latency percentile is in seconds. A version with no known revision, or a
template naming the revision where none serves, is no value with the reason,
never a pass. The stand-in KServe serves real traffic (real model servers
behind its weighted router) and a real ``/usr/bin/prometheus`` scrapes its
queue-proxy metrics; skipped without the binary (failed in CI).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.backends.metrics.prometheus import (
    PrometheusMetrics,
    Revision,
    RevisionLookup,
    revision_queries,
)
from controller.specs.types import AnalysisCheck
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster
from tests.fixtures.required import program
from tests.test_metrics_prometheus import PrometheusServer

WINDOW = 10.0
SUCCESS = AnalysisCheck(name="success", builtin="successRate", min=0.99)
COUNT = AnalysisCheck(name="count", builtin="requestCount", min=1)
LATENCY = AnalysisCheck(name="p95", builtin="latency", percentile=95, max=1.0)


@pytest.mark.unit
def test_builtin_checks_become_promql_over_the_revisions_queue_proxy_metrics() -> None:
    revision = Revision(namespace="ml-serving", name="iris-predictor-00002")
    selector = 'namespace_name="ml-serving",revision_name="iris-predictor-00002"'
    success = revision_queries("successRate", percentile=None, revision=revision, window_seconds=60)
    assert success.value == (
        f"(sum(increase(revision_app_request_count{{{selector},"
        f'response_code_class="2xx"}}[1m])) or vector(0))'
        f" / sum(increase(revision_app_request_count{{{selector}}}[1m]))"
    )
    latency = revision_queries("latency", percentile=95, revision=revision, window_seconds=60)
    assert latency.value.startswith("histogram_quantile(0.95, ") and latency.value.endswith(") / 1000")


@pytest.mark.unit
def test_no_known_revision_is_no_value_with_the_reason() -> None:
    def unknown(environment: str, model: str, version: str) -> Revision | None:
        raise LookupError(f"no revision of {model} {version} is known in {environment}")

    with PrometheusMetrics("http://127.0.0.1:9", revisions=unknown) as source:
        measured = source.measure(SUCCESS, model="iris", version="v2", environment="qa", window_seconds=6)
    assert measured.value is None and measured.reason == "no revision of iris v2 is known in qa"
    templated = AnalysisCheck(name="mine", query='sum(x{revision_name="{{revision}}"})', min=0)
    with PrometheusMetrics("http://127.0.0.1:9", revisions=lambda e, m, v: None) as source:
        measured = source.measure(templated, model="iris", version="v2", environment="qa", window_seconds=6)
    assert measured.value is None
    assert "{{revision}} is known only where a KServe revision serves" in measured.reason


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    program("prometheus")
    with kserve_cluster(tmp_path) as started:
        yield started


def revisions(cluster: Cluster) -> RevisionLookup:
    def lookup(environment: str, model: str, version: str) -> Revision | None:
        name = cluster.backend.revision(environment=ENV, model=model, version=version)
        if name is None:
            raise LookupError(f"no revision of {model} {version} is known in {environment}")
        return Revision(namespace="ml-serving", name=name)

    return lookup


@pytest.mark.integration
def test_a_canary_failing_on_part_of_its_inputs_shows_in_prometheus(cluster: Cluster, tmp_path: Path) -> None:
    backend = cluster.backend
    backend.deploy(environment=ENV, version=cluster.version("v1"))
    backend.deploy(environment=ENV, version=cluster.version("v2", fail="partial"))
    backend.set_weights(environment=ENV, model="iris", weights={"v2": 50, "v1": 50})
    (tmp_path / "prometheus").mkdir()
    prometheus = PrometheusServer(tmp_path / "prometheus", scrape_target=cluster.kserve.metrics_target)
    stop = threading.Event()

    def traffic() -> None:
        good, bad = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]  # the canary fails on the bad one
        rows = [good, good, bad, bad]  # the router alternates at 50/50: each version gets both
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                for row in rows:
                    cluster.infer(http, row)
                stop.wait(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        # several scrapes of the canary's errors and its successes: the window's increase() is then full
        prometheus.wait_until(
            'count_over_time(revision_app_request_count{revision_name="iris-predictor-00002",'
            'response_code_class="5xx"}[30s]) >= 8',
            seconds=60,
        )
        with PrometheusMetrics(prometheus.url, revisions=revisions(cluster)) as source:

            def measure(check: AnalysisCheck, version: str) -> float | None:
                measured = source.measure(
                    check, model="iris", version=version, environment="staging", window_seconds=WINDOW
                )
                return measured.value

            canary, stable = measure(SUCCESS, "v2"), measure(SUCCESS, "v1")
            assert canary is not None and 0.2 < canary < 0.8  # half its inputs fail
            assert stable == 1.0
            count = measure(COUNT, "v2")
            assert count is not None and count > 0
            latency = measure(LATENCY, "v1")
            assert latency is not None and 0 < latency < 10  # seconds, not milliseconds
            mine = AnalysisCheck(
                name="mine",
                query='sum(increase(revision_app_request_count{namespace_name="{{namespace}}",'
                'revision_name="{{revision}}",response_code_class="5xx"}[{{window}}]))',
                max=0,
            )
            errors = measure(mine, "v2")
            assert errors is not None and errors > 0
            assert measure(mine, "v1") is None  # no 5xx series for the stable revision: no value
    finally:
        stop.set()
        sender.join(timeout=10)
        prometheus.stop()

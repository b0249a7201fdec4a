"""The Prometheus metrics source: answers analysis checks with PromQL.

Used when an Environment names a Prometheus (``metrics.source: prometheus``),
on whichever home serves it. The rollout engine calls :meth:`PrometheusMetrics.measure`; this
module turns the check into an instant PromQL query and runs it through
``prometheus_api_client.PrometheusConnect``.

- Built-in checks become PromQL over the router's ``flywheel_*`` metrics
  (see :func:`builtin_queries`), or, where a version is served by a KServe
  revision (the ``revisions`` lookup the composition root gives, see
  :class:`Revision`), over the metrics that revision's queue proxy exports
  (see :func:`revision_queries`), so a spec's checks read the same on both
  homes.
- A check's own ``query`` has ``{{model}}``, ``{{version}}`` and
  ``{{environment}}`` filled in as escaped label values, so a name cannot end
  the string it sits in and inject PromQL, ``{{window}}`` as a PromQL
  duration such as ``1m``, and on KServe ``{{revision}}`` and
  ``{{namespace}}`` as the revision serving the version and its namespace
  (no revision known: no value, with the reason).
- The query must give one number: an empty result ("no series"), NaN (0/0,
  no requests), several series, an HTTP error and an unreachable server all
  become a measurement without a value and with the reason; nothing raises.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from controller.backends.metrics import (
    DEFAULT_PERCENTILE,
    NO_REQUESTS,
    NO_SERIES,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    Measurement,
)
from controller.specs.types import AnalysisCheck

_PLACEHOLDER = re.compile(r"\{\{\s*(model|version|environment|window|revision|namespace)\s*\}\}")
# What a KServe revision's queue proxy exports (Knative serving's names); latencies in milliseconds.
REVISION_REQUESTS = "revision_app_request_count"  # counter: namespace_name, revision_name, response_code…
REVISION_LATENCIES = "revision_app_request_latencies"  # histogram, milliseconds


@dataclass(frozen=True)
class Revision:
    """The KServe revision serving one version: its namespace and name, as its metrics are labelled."""

    namespace: str
    name: str


RevisionLookup = Callable[[str, str, str], "Revision | None"]
"""(environment, model, version) → the revision serving it; None where the environment is not on KServe.

Raises :class:`LookupError` saying why when the environment is on KServe but
no revision of the version is known (not deployed, or KServe unreachable).
"""
_BODY_REPR = re.compile(r"\((b(['\"]).*\2)\)\s*$", re.DOTALL)


class UnsafeLabelValue(ValueError):
    """A label value that cannot be put into a PromQL string safely."""


def escape_label_value(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted PromQL string.

    Backslashes, double quotes and line breaks are escaped. Single quotes and
    backticks are refused: a template may put the value in a single-quoted or
    raw string, where no escape would keep them from ending it.
    """
    if "'" in value or "`" in value:
        raise UnsafeLabelValue(f"label value {value!r} contains a quote that cannot be escaped safely")
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )


def promql_duration(seconds: float) -> str:
    """A PromQL duration for ``seconds``: ``90`` → ``1m30s``, ``1.5`` → ``1500ms``."""
    millis = max(round(seconds * 1000), 1)
    if millis % 1000:
        return f"{millis}ms"
    rest = millis // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def render_query(
    template: str,
    *,
    model: str,
    version: str,
    environment: str,
    window_seconds: float,
    revision: Revision | None = None,
) -> str:
    """Fill the ``{{...}}`` placeholders of a check's PromQL template.

    Raises :class:`ValueError` when the template names ``{{revision}}`` or
    ``{{namespace}}`` and no ``revision`` is given.
    """
    values = {
        "model": escape_label_value(model),
        "version": escape_label_value(version),
        "environment": escape_label_value(environment),
        "window": promql_duration(window_seconds),
    }
    if revision is not None:
        values["revision"] = escape_label_value(revision.name)
        values["namespace"] = escape_label_value(revision.namespace)

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            name = match.group(1)
            raise ValueError(f"{{{{{name}}}}} is known only where a KServe revision serves the version")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


@dataclass(frozen=True)
class Queries:
    """The PromQL for one check: its value and, when known, the number of requests behind it."""

    value: str
    samples: str | None = None
    nan_reason: str = NO_REQUESTS  # what NaN (0/0) means for this query


def builtin_queries(
    builtin: str,
    *,
    percentile: float | None,
    model: str,
    version: str,
    environment: str,
    window_seconds: float,
) -> Queries:
    """The PromQL for a built-in check, over the same metrics the built-in source reads."""
    selector = (
        f'environment="{escape_label_value(environment)}",'
        f'model="{escape_label_value(model)}",version="{escape_label_value(version)}"'
    )
    return _shaped(
        builtin,
        percentile=percentile,
        window=promql_duration(window_seconds),
        selector=selector,
        requests=REQUESTS_TOTAL,
        success='outcome="success"',
        latency=REQUEST_DURATION,
        to_seconds="",
    )


def revision_queries(
    builtin: str, *, percentile: float | None, revision: Revision, window_seconds: float
) -> Queries:
    """The PromQL for a built-in check over a KServe revision's queue-proxy metrics.

    The same measures as :func:`builtin_queries`: a success is a 2xx answer,
    a latency is in seconds (the queue-proxy counts milliseconds).
    """
    selector = (
        f'namespace_name="{escape_label_value(revision.namespace)}",'
        f'revision_name="{escape_label_value(revision.name)}"'
    )
    return _shaped(
        builtin,
        percentile=percentile,
        window=promql_duration(window_seconds),
        selector=selector,
        requests=REVISION_REQUESTS,
        success='response_code_class="2xx"',
        latency=REVISION_LATENCIES,
        to_seconds=" / 1000",
    )


def _shaped(
    builtin: str,
    *,
    percentile: float | None,
    window: str,
    selector: str,
    requests: str,
    success: str,
    latency: str,
    to_seconds: str,
) -> Queries:
    """The built-in checks over one home's metrics: a request counter, its success label, a histogram."""
    total = f"sum(increase({requests}{{{selector}}}[{window}]))"
    if builtin == "requestCount":
        return Queries(value=total)
    if builtin == "successRate":
        # `or vector(0)`: a version with only errors has no success series at all.
        succeeded = f"sum(increase({requests}{{{selector},{success}}}[{window}]))"
        return Queries(value=f"({succeeded} or vector(0)) / {total}", samples=total)
    if builtin == "latency":
        q = (percentile if percentile is not None else DEFAULT_PERCENTILE) / 100.0
        buckets = f"sum by (le) (rate({latency}_bucket{{{selector}}}[{window}]))"
        count = f"sum(increase({latency}_count{{{selector}}}[{window}]))"
        return Queries(value=f"histogram_quantile({q:g}, {buckets}){to_seconds}", samples=count)
    raise ValueError(f"unknown builtin check {builtin!r}")


class PrometheusMetrics:
    """A :class:`~controller.backends.metrics.MetricsSource` backed by a Prometheus server.

    Connection failures are retried once, without waiting: the next analysis
    round is the real retry. Close it (or use it as a context manager) to
    release its HTTP connections.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, revisions: RevisionLookup | None = None) -> None:
        self.url = url.rstrip("/")
        self.revisions = revisions
        retry = Retry(total=1, connect=1, read=0, status=0, backoff_factor=0, raise_on_status=False)
        # The library annotates timeout as int; requests takes any number of seconds.
        client_timeout: Any = timeout
        self._client = PrometheusConnect(url=self.url, retry=retry, timeout=client_timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusMetrics:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def measure(
        self, check: AnalysisCheck, *, model: str, version: str, environment: str, window_seconds: float
    ) -> Measurement:
        try:
            revision = self.revisions(environment, model, version) if self.revisions is not None else None
        except LookupError as err:
            return Measurement.missing(str(err.args[0]) if err.args else f"no revision of {model} {version}")
        try:
            if check.query is not None:
                queries = Queries(
                    value=render_query(
                        check.query,
                        model=model,
                        version=version,
                        environment=environment,
                        window_seconds=window_seconds,
                        revision=revision,
                    ),
                    nan_reason=f"query returned NaN ({NO_REQUESTS}?)",
                )
            elif check.builtin is not None and revision is not None:
                queries = revision_queries(
                    check.builtin,
                    percentile=check.percentile,
                    revision=revision,
                    window_seconds=window_seconds,
                )
            elif check.builtin is not None:
                queries = builtin_queries(
                    check.builtin,
                    percentile=check.percentile,
                    model=model,
                    version=version,
                    environment=environment,
                    window_seconds=window_seconds,
                )
            else:
                return Measurement.missing(f"check {check.name!r} has neither a builtin nor a query")
        except ValueError as err:
            return Measurement.missing(str(err))

        value, reason = self._query(queries.value)
        if value is None:
            return Measurement.missing(reason)
        samples: int | None = None
        if queries.samples is not None:
            count, _ = self._query(queries.samples)
            samples = round(count) if count is not None and math.isfinite(count) else None
        elif check.builtin == "requestCount" and math.isfinite(value):
            samples = round(value)
        if math.isnan(value):
            return Measurement.missing(queries.nan_reason, samples=samples)
        return Measurement(value=value, samples=samples)

    def _query(self, promql: str) -> tuple[float | None, str]:
        """Run an instant query that must give one number: (value, "") or (None, reason)."""
        try:
            result = self._client.custom_query(query=promql)
        except requests.exceptions.RequestException as err:
            return None, f"Prometheus unreachable at {self.url}: {type(err).__name__}"
        except PrometheusApiClientException as err:
            return None, f"query failed: {_prometheus_error(err)}"
        except (ValueError, KeyError, TypeError) as err:  # not the Prometheus API's JSON
            return None, f"query failed: unexpected answer from {self.url} ({err})"
        return _one_number(result)


def _prometheus_error(err: PrometheusApiClientException) -> str:
    """Prometheus's own error message, from the library's "HTTP Status Code N (b'...')" text."""
    text = str(err)
    match = _BODY_REPR.search(text)
    if match is not None:
        try:
            body = ast.literal_eval(match.group(1))
            message = json.loads(body)["error"]
        except (ValueError, SyntaxError, TypeError, KeyError):
            return text
        if isinstance(message, str):
            return message
    return text


def _one_number(result: Any) -> tuple[float | None, str]:
    """The one number in a query's ``data.result``: an instant vector with one sample, or a scalar."""
    try:
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            return float(result[1]), ""  # a scalar: [time, "value"]
        if not isinstance(result, list):
            return None, f"query failed: unexpected result {result!r}"
        if not result:
            return None, NO_SERIES
        if len(result) > 1:
            return None, f"query returned {len(result)} series; it must return one"
        return float(result[0]["value"][1]), ""
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"query failed: the result is not a number: {result!r}"

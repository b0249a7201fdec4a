"""The drift endpoint of the webhook service and the controller's consumer of what it queues.

Pins down: a request and its answer, in CloudEvents binary mode (``ce-*``
headers) and structured mode (``application/cloudevents+json``), with the
token in the logger's URL or in the header, are each stored once in the
inbox (source ``kserve``, ids ``<ce-id>/request`` and ``<ce-id>/response``,
so they match by ``ce-id``), and a replay is a duplicate that changes
nothing; a missing or wrong token is a 401 and an unknown model changes
nothing either; a body that is not a CloudEvent, or whose data is not a JSON
object, is a 400; other event types are ignored; the counts are on
``/metrics``; the endpoint is mounted only with a token, which must be long
enough; the KServe backend's logger URL is the endpoint's. The controller's
consumer pairs each request with its answer (either may come first) and adds
the rows to the answering version's window, which the drift trigger reads
(a shifted feature drifts, the others do not), which is saved under the
state directory, and whose gauges the webhook service's ``/metrics`` exports.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from controller.backends.store.sql import SqlStore
from controller.drift.logger import REQUEST_EVENT, RESPONSE_EVENT, TOKEN_HEADER, predictor_logger
from controller.settings import ENV_DRIFT_TOKEN, ENV_SECRET, SettingsError, WebhookSettings
from webhooks.app import create_app

pytestmark = pytest.mark.unit

TOKEN = "a-drift-token-of-some-length"
PATH = "/drift/iris/production"
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
ANSWER = {"model_name": "iris",
          "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]}]}


def rows(state: Path) -> list[tuple[str, str, str, dict[str, object]]]:
    with sqlite3.connect(state / "state.db") as db:
        found = db.execute("SELECT source, delivery_id, kind, payload FROM inbox_events ORDER BY id")
        return [(s, d, k, json.loads(p)) for s, d, k, p in found]


def binary(event_type: str, event_id: str = "e-1", data: object = INFER) -> tuple[dict[str, str], bytes]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "http://localhost:9081/",
        "ce-type": event_type,
        "ce-inferenceservicename": "iris",
        "content-type": "application/json",
    }, json.dumps(data).encode()


@pytest.fixture
def client(store: SqlStore) -> Iterator[TestClient]:
    settings = WebhookSettings(github_secrets=("s",), drift_token=TOKEN)
    with TestClient(create_app(settings, store)) as test_client:
        yield test_client


def test_a_request_and_its_answer_are_queued_once_each_and_match_by_their_id(
    client: TestClient, state: Path
) -> None:
    headers, body = binary(REQUEST_EVENT)
    first = client.post(f"{PATH}?token={TOKEN}", headers=headers, content=body)
    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    again = client.post(f"{PATH}?token={TOKEN}", headers=headers, content=body)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    structured = {"specversion": "1.0", "id": "e-1", "source": "http://localhost:9081/",
                  "type": RESPONSE_EVENT, "datacontenttype": "application/json", "data": ANSWER}
    answer = client.post(PATH, headers={"content-type": "application/cloudevents+json", TOKEN_HEADER: TOKEN},
                         content=json.dumps(structured).encode())
    assert answer.status_code == 202, answer.text
    stored = rows(state)
    assert [(s, d, k) for s, d, k, _ in stored] == [
        ("kserve", "e-1/request", "drift.inference"), ("kserve", "e-1/response", "drift.inference")
    ]
    assert stored[0][3] == {"model": "iris", "environment": "production", "id": "e-1", "part": "request",
                            "source": "http://localhost:9081/", "data": INFER}
    assert stored[1][3]["data"] == ANSWER
    metrics = client.get("/metrics").text
    assert 'flywheel_drift_events_total{outcome="accepted"} 2.0' in metrics
    assert 'flywheel_drift_events_total{outcome="duplicate"} 1.0' in metrics


@pytest.mark.parametrize("query,header", [("", None), ("?token=wrong-token-of-some-length", None),
                                          ("", "wrong"), ("?token=", TOKEN[:-1])])
def test_a_missing_or_wrong_token_is_refused_and_stores_nothing(
    client: TestClient, state: Path, query: str, header: str | None
) -> None:
    headers, body = binary(REQUEST_EVENT)
    if header is not None:
        headers[TOKEN_HEADER] = header
    refused = client.post(PATH + query, headers=headers, content=body)
    assert refused.status_code == 401 and refused.json()["status"] == "bad_token"
    assert rows(state) == []


def test_malformed_events_are_refused_and_other_types_ignored(client: TestClient, state: Path) -> None:
    url = f"{PATH}?token={TOKEN}"
    headers, body = binary(REQUEST_EVENT)
    del headers["ce-source"]
    missing = client.post(url, headers=headers, content=body)
    assert missing.status_code == 400 and "not a CloudEvent" in missing.json()["error"]
    garbage = client.post(url, headers={"content-type": "application/cloudevents+json"}, content=b"{not json")
    assert garbage.status_code == 400
    headers, _ = binary(REQUEST_EVENT)
    not_an_object = client.post(url, headers=headers, content=b"[1, 2]")
    assert not_an_object.status_code == 400 and "not a JSON object" in not_an_object.json()["error"]
    headers, body = binary("dev.knative.other")
    ignored = client.post(url, headers=headers, content=body)
    assert (ignored.status_code, ignored.json()["status"]) == (202, "ignored")
    assert rows(state) == []


def test_the_endpoint_needs_a_token_long_enough(store: SqlStore) -> None:
    with TestClient(create_app(WebhookSettings(github_secrets=("s",)), store)) as plain:
        headers, body = binary(REQUEST_EVENT)
        assert plain.post(f"{PATH}?token={TOKEN}", headers=headers, content=body).status_code == 404
    with pytest.raises(SettingsError, match=f"{ENV_DRIFT_TOKEN} must be at least 16 characters"):
        WebhookSettings.from_env({ENV_SECRET: "s", ENV_DRIFT_TOKEN: "short"})
    assert WebhookSettings.from_env({ENV_SECRET: "s", ENV_DRIFT_TOKEN: TOKEN}).drift_token == TOKEN


def test_the_logger_the_kserve_backend_renders_posts_to_the_endpoint(client: TestClient, state: Path) -> None:
    logger = predictor_logger("http://flywheel-webhooks.flywheel:8080/", model="iris",
                              environment="production", token=TOKEN)
    assert logger["mode"] == "all"
    url = urlsplit(logger["url"])
    assert (url.netloc, url.path) == ("flywheel-webhooks.flywheel:8080", PATH)
    headers, body = binary(REQUEST_EVENT, "e-2")
    assert client.post(f"{url.path}?{url.query}", headers=headers, content=body).status_code == 202
    assert [d for _, d, _, _ in rows(state)] == ["e-2/request"]


# ------------------------------------------------------------------ the controller's consumer


def test_the_consumer_pairs_requests_with_answers_and_fills_the_versions_window(
    client: TestClient, store: SqlStore, tmp_path: Path
) -> None:
    import numpy as np

    from controller.backends.serving.drift_source import ServedDrift
    from controller.clock import FakeClock
    from controller.drift import build_profile
    from controller.drift.profile import write_profile
    from controller.engine.inbox import InboxDispatcher
    from controller.specs.types import DriftMonitoring, Environment
    from controller.steplib import flywheel_reference

    features = ["a", "b", "c", "d"]
    reference = np.random.default_rng(0).normal(size=(2000, 4))
    data = flywheel_reference.write(reference, features, path=tmp_path / "reference.csv")
    assert data is not None
    write_profile(build_profile(data), tmp_path)
    drift = ServedDrift.with_cluster({}, tmp_path / "drift", clock=FakeClock())
    assert drift.cluster is not None
    settings = DriftMonitoring(min_samples=200, sustained_windows=1)
    drift.cluster.watch(environment="production", model="iris", version="v1",
                        profile=tmp_path / "flywheel-reference-profile.json", settings=settings)

    live = np.random.default_rng(1).normal(size=(300, 4))
    live[:, 1] += 1.0
    for index in range(0, 300, 30):
        chunk = live[index:index + 30]
        tensor = {"name": "x", "shape": [30, 4], "datatype": "FP64", "data": chunk.ravel().tolist()}
        request = {"inputs": [tensor]}
        answer = {"model_name": "iris", "model_version": "v1",
                  "outputs": [{"name": "p", "shape": [30], "datatype": "INT64", "data": [0] * 30}]}
        for event_type, body in ((RESPONSE_EVENT, answer), (REQUEST_EVENT, request)):  # either may come first
            headers, content = binary(event_type, f"e-{index}", body)
            assert client.post(f"{PATH}?token={TOKEN}", headers=headers, content=content).status_code == 202
    InboxDispatcher(store, drift.handlers()).handle_due(limit=100)

    cluster = Environment(name="production", spec_path="environments/production.yaml", home="cluster",
                          serving_backend="kserve")
    version, report = drift.production(environment=cluster, model="iris")
    assert version == "v1" and report is not None and report.rows == 300
    statuses = {f.feature: f.status for f in report.features}
    assert statuses["b"] == "drift" and statuses["a"] == "stable"
    drift.save()
    assert (tmp_path / "drift" / "production" / "drift-windows" / "iris" / "v1.json").exists()

    hooks_app = create_app(WebhookSettings(github_secrets=("s",)), store, collectors=[drift.cluster])
    with TestClient(hooks_app) as hooks:
        gauges = hooks.get("/metrics").text
    for feature, drifted in (("b", "1.0"), ("a", "0.0")):
        labels = f'environment="production",feature="{feature}",model="iris",version="v1"'
        assert f"flywheel_drift_drifted{{{labels}}} {drifted}" in gauges

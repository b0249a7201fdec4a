"""The dashboard's JSON API answers as its OpenAPI document says, for requests schemathesis makes up.

Every operation of ``/api/v1/openapi.json`` is called with a few dozen
generated requests (path and query parameters, valid and not) against a
store holding models, versions, a rollout that serves, approvals, audit
entries and a review; each answer must be no server error, have a status
and a content type the document declares, and a body that fits its schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from starlette.applications import Starlette
from starlette.testclient import TestClient

from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.ui import create_app
from tests.fixtures import T0

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlStore]:
    clock = FakeClock(T0)
    opened = open_store(tmp_path_factory.mktemp("ui-api") / "state", clock=clock)
    for name in ("iris", "wine"):
        for n in (1, 2):
            run = opened.create_run(model=name, ref="main", commit=f"{n}" * 40, cache_key=f"{name}{n}")
            opened.register_version(
                model=name,
                run_id=run.id,
                commit=run.commit,
                artifact_digest="sha256:a",
                artifact_uri="/a",
                environment_hash="e",
                params={"C": n},
                metrics={"accuracy": 0.9},
            )
            clock.advance(60)
    opened.create_rollout(model="iris", version=2, stages=("staging", "production"), state="gate")
    opened.record_serving(environment="staging", model="iris", version=2, weight=100)
    opened.add_approval(
        user="carol", decision="approve", channel="cli", model="iris", version=2, environment="production"
    )
    opened.append_audit(
        actor="carol", action="approval.approve", model="iris", version=2, environment="production"
    )
    opened.save_review(proposal="feature/x", model="wine", commit="f" * 40, body="# report", state="success")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def app(store: SqlStore) -> Starlette:
    return create_app(models=store, history=store, clock=FakeClock(T0.replace(year=T0.year + 1)))


@pytest.fixture(scope="module")
def api(app: Starlette) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def test_every_answer_fits_the_openapi_document(api: schemathesis.schemas.BaseSchema) -> None:
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 13
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate()

        answers_as_documented()


def test_the_document_names_every_operation_the_pages_and_the_cli_stand_on(app: Starlette) -> None:
    document = TestClient(app).get("/api/v1/openapi.json").json()
    assert sorted(document["paths"]) == [
        "/api/v1/approvals/pending",
        "/api/v1/audit",
        "/api/v1/audit/entries",
        "/api/v1/models",
        "/api/v1/models/{model}",
        "/api/v1/models/{model}/actions",
        "/api/v1/models/{model}/drift",
        "/api/v1/models/{model}/history",
        "/api/v1/models/{model}/status",
        "/api/v1/models/{model}/versions",
        "/api/v1/proposals",
        "/api/v1/rollouts/{rollout}",
        "/api/v1/status",
    ]
    assert document["components"]["schemas"]["ModelList"]["properties"]["total"]["type"] == "integer"

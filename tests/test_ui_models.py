"""The model list pages in SQL: search by any part of the name, sort, and pages that neither overlap nor skip.

:meth:`~controller.backends.store.Registry.page_models` is read directly and
through the dashboard's list page and API (a store written by
``register_version``); a proposal's report is shown on the proposals page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from controller.backends.store import PullRequest, open_store
from controller.backends.store.sql import SqlStore
from controller.cli.ui import dashboard
from controller.clock import FakeClock
from controller.ui import LinkMaker, create_app
from tests.fixtures import T0

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> Iterator[SqlStore]:
    """One store for the module (its tests only read it, but for one review)."""
    store = open_store(tmp_path_factory.mktemp("ui-models") / "state", clock=clock)
    with store.transaction():
        _register(store, clock)
    yield store
    store.close()


def _register(store: SqlStore, clock: FakeClock) -> None:
    """120 models of one to three versions, registered one second apart; every tenth named Fraud-."""
    for n in range(120):
        name = f"model-{n:03d}" if n % 10 else f"Fraud-{n:03d}"
        for version in range(1 + n % 3):
            run = store.create_run(
                model=name, ref="main", commit=f"{n:020d}{version:020d}", cache_key=f"{n}-{version}"
            )
            store.register_version(
                model=name,
                run_id=run.id,
                commit=run.commit,
                artifact_digest="sha256:a",
                artifact_uri="/a",
                environment_hash="e",
            )
            clock.advance(1)


def test_pages_of_models_by_name_cover_every_model_once(registry: SqlStore) -> None:
    seen: list[str] = []
    for offset in range(0, 120, 50):
        page = registry.page_models(offset=offset, limit=50)
        assert page.total == 120
        seen += [m.model for m in page.models]
    assert seen == sorted(registry.list_models()) and len(set(seen)) == 120
    first = registry.page_models(limit=3).models[0]
    assert (first.model, first.versions, first.latest) == ("Fraud-000", 1, 1)


def test_models_sort_by_versions_and_by_latest_registration(registry: SqlStore) -> None:
    most = registry.page_models(sort="-versions", limit=40).models
    assert {m.versions for m in most} == {3}
    assert [m.model for m in most] == sorted(m.model for m in most)  # ties by name
    newest = registry.page_models(sort="-latest", limit=2).models
    assert [m.model for m in newest] == ["model-119", "model-118"]
    assert newest[0].latest_at > newest[1].latest_at
    assert registry.page_models(sort="latest", limit=1).models[0].model == "Fraud-000"
    with pytest.raises(ValueError, match="sort 'size' is not one of"):
        registry.page_models(sort="size")  # type: ignore[typeddict-item]


def test_search_matches_any_part_of_the_name_in_any_case(registry: SqlStore) -> None:
    page = registry.page_models(search="fraud")
    assert page.total == 12 and all(m.model.startswith("Fraud-") for m in page.models)
    assert registry.page_models(search="%").total == 0  # a wildcard of LIKE is a plain character here
    assert registry.page_models(search="L-11").total == 9  # model-110 .. model-119 but Fraud-110


def test_the_list_page_searches_sorts_and_links_the_next_and_previous_pages(
    registry: SqlStore, clock: FakeClock
) -> None:
    app = TestClient(create_app(models=registry, history=registry, clock=clock))
    page = app.get("/", params={"offset": 50, "limit": 50})
    shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert "51–100 of 120" in shown
    names = re.findall(r'href="http://testserver/models/([^"]+)"', page.text)
    assert names == sorted(registry.list_models())[50:100]
    assert 'rel="next" href="http://testserver/?sort=name&amp;offset=100&amp;limit=50"' in page.text
    assert 'rel="prev" href="http://testserver/?sort=name&amp;offset=0&amp;limit=50"' in page.text
    found = app.get("/api/v1/models", params={"q": "FRAUD", "sort": "-name", "limit": 5}).json()
    assert found["total"] == 12 and [m["model"] for m in found["models"]][:2] == ["Fraud-110", "Fraud-100"]
    assert found["models"][0]["condition"] is None and found["models"][0]["serving"] == []
    empty = app.get("/", params={"q": "nothing-like-it"})
    assert "no model matches “nothing-like-it”" in empty.text


def test_proposals_show_their_reports_and_link_the_commit_and_the_pull_request(
    registry: SqlStore, clock: FakeClock
) -> None:
    registry.save_review(
        proposal="feature/deeper",
        model="model-001",
        commit="c" * 40,
        body="## Report\nall gates passed",
        state="success",
        description="passed its gates",
    )
    app = TestClient(
        create_app(
            models=registry, history=registry, clock=clock, links=LinkMaker(github_repository="octo/ml")
        )
    )
    page = app.get("/proposals")
    assert (
        "feature/deeper" in page.text and "passed its gates" in page.text and "all gates passed" in page.text
    )
    assert 'href="https://github.com/octo/ml/commit/' + "c" * 40 + '"' in page.text
    assert app.get("/api/v1/proposals", params={"branch": "nope"}).status_code == 404
    assert "pull request" not in page.text  # none known for the branch yet
    registry.save_pull_request(
        PullRequest(
            number=42,
            head_ref="feature/deeper",
            head_sha="c" * 40,
            base_ref="main",
            author="alice",
            fork=False,
            state="open",
            merged=False,
            updated_at="2026-11-27T12:00:00Z",
        )
    )
    served = TestClient(dashboard(registry, clock=clock, catalog=lambda: None, github_repository="octo/ml"))
    assert '<a href="https://github.com/octo/ml/pull/42">pull request</a>' in served.get("/proposals").text

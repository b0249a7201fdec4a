"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

The app is served by uvicorn (in a thread) over a store the real rollout
engine wrote (:mod:`tests.fixtures.rollout_world`): a model at an approval
gate and another model beside it. A person lists and searches the models,
opens a model, follows its rollout and reads its analysis rounds and chart,
and finds the rollout on the pending approvals page. Skipped without
``/usr/bin/chromium`` (``apt-get install chromium``), failed instead under
``FLYWHEEL_TEST_REQUIRE_ALL=1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from controller.ui import create_app
from tests.fixtures.required import browser_env, program
from tests.fixtures.rollout_world import rollout_world
from tests.fixtures.served import served

pytestmark = pytest.mark.integration
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """The dashboard's address, over iris v2 waiting at production's approval gate and wine v1."""
    with rollout_world(tmp_path) as world:
        world.to_gate(gap=60)
        world.register(1, model="wine")
        app = create_app(
            models=world.store, history=world.store, clock=world.clock, catalog=lambda: world.catalog
        )
        with served(app) as url:
            yield url


@pytest.fixture
def page(site: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    chromium = program("chromium")
    browser_env(monkeypatch)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page()
            tab.set_default_timeout(20_000)
            tab.goto(site)
            yield tab
        finally:
            browser.close()


def test_a_person_lists_and_searches_the_models_and_follows_a_rollout_to_its_rounds(page: Page) -> None:
    rows = page.locator("table.models tbody tr")
    assert rows.count() == 2
    assert "holding" in rows.nth(0).inner_text() and "wine" in rows.nth(1).inner_text()
    page.get_by_label("search by name").fill("WIN")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/?q=WIN**")
    assert [r.inner_text().split()[0] for r in page.locator("table.models tbody tr").all()] == ["wine"]

    page.get_by_label("search by name").fill("")
    page.get_by_role("button", name="Show").click()
    page.get_by_role("link", name="iris", exact=True).click()
    assert page.locator("h1").inner_text().startswith("iris")
    assert "v2" in page.locator("table.versions tbody tr").first.inner_text()
    page.get_by_role("link", name="#2").click()
    assert page.locator("h1").inner_text() == "Rollout #2: iris v2"
    assert "waiting for 1 more approval from business-owners" in page.locator("p.gate").inner_text()
    assert page.locator("tr.round").count() >= 1
    assert page.locator("svg.chart").count() >= 3  # one per check, and the weights

    page.get_by_role("link", name="Pending approvals").click()
    pending = page.locator("tr.waiting")
    assert pending.count() == 1 and "production-signoff" in pending.inner_text()

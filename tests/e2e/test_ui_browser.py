"""Acting on the dashboard in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

The issue's "done when", as people would try it: over a store the real
rollout engine wrote (iris v2, authored by alice, waiting at production's
approval gate; wine beside it), served by uvicorn behind a stand-in for an
authenticating proxy (the browser sends ``X-Forwarded-User``; 127.0.0.1 is
the trusted proxy), a person lists and searches the models, opens the
rollout at its gate, approves it as carol and sees the rollout move on once
the engine ticks; alice (the change's author) and grace (in no group) are
refused with the engine's reason on the page; a form forged without the
CSRF token changes nothing; and the one-time sign-in address signs carol in
by her operating-system login. Skipped without ``/usr/bin/chromium``
(``apt-get install chromium``), failed instead under ``FLYWHEEL_TEST_REQUIRE_ALL=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from controller.ui import create_app
from controller.ui.access import Access, SignIn, networks
from tests.fixtures.required import browser_env, program
from tests.fixtures.rollout_world import RolloutWorld, rollout_world
from tests.fixtures.served import served

pytestmark = pytest.mark.e2e
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
TOKEN = "one-time-token-for-the-browser"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path, people=True) as world:
        world.to_gate(gap=60)
        world.register(1, model="wine")
        yield world


@pytest.fixture
def site(world: RolloutWorld) -> Iterator[str]:
    access = Access(trusted_proxies=networks(["127.0.0.1/32"]), sign_in=SignIn("cmiller", token=TOKEN))
    app = create_app(
        models=world.store,
        history=world.store,
        clock=world.clock,
        catalog=lambda: world.catalog,
        records=world.store,
        access=access,
    )
    with served(app) as url:
        yield url


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    chromium = program("chromium")
    browser_env(monkeypatch)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def person(browser: Browser, site: str) -> Callable[[str | None], Page]:
    """A browser tab of someone the proxy names (``None``: nobody), on the model list."""

    def open_as(user: str | None) -> Page:
        context = browser.new_context(extra_http_headers={"X-Forwarded-User": user} if user else {})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        tab.goto(site)
        return tab

    return open_as


def decisions(world: RolloutWorld) -> list[tuple[str, str, str]]:
    found = world.store.approvals_for(model="iris", version=2, environment="production")
    return [(a.user, a.decision, a.channel) for a in found]


def to_the_gate(page: Page) -> None:
    page.get_by_label("search by name").fill("IRI")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/?q=IRI**")
    assert [r.inner_text().split()[0] for r in page.locator("table.models tbody tr").all()] == ["iris"]
    page.get_by_role("link", name="Pending approvals").click()
    page.locator("tr.waiting").get_by_role("link", name="#2").click()
    assert page.locator("h1").inner_text() == "Rollout #2: iris v2"
    assert "waiting for 1 more approval from business-owners" in page.locator("p.gate").inner_text()


def test_an_allowed_person_approves_and_the_rollout_moves_on(
    person: Callable[[str | None], Page], world: RolloutWorld
) -> None:
    page = person("carol")
    assert page.locator("table.models tbody tr").count() == 2
    to_the_gate(page)
    page.get_by_label("Comment").fill("numbers look fine")
    page.get_by_role("button", name="Approve").click()
    assert "carol approved iris v2 for production" in page.locator("p.flash.done").inner_text()
    assert "carol approved via dashboard" in page.locator("li.approval").last.inner_text()
    assert decisions(world) == [("carol", "approve", "dashboard")]
    world.settle(seconds=11, ticks=8)
    page.reload()
    assert "Ended" in page.locator("dl.facts").inner_text()
    assert page.get_by_role("button", name="Approve").count() == 0


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("alice", "alice made this change and cannot approve it"),
        ("grace", "grace may not approve: the policy on main does not allow it."),
    ],
)
def test_the_author_and_a_person_in_no_group_are_refused_with_the_reason_shown(
    person: Callable[[str | None], Page], world: RolloutWorld, user: str, reason: str
) -> None:
    page = person(user)
    to_the_gate(page)
    page.get_by_role("button", name="Approve").click()
    assert reason in page.locator("p.flash.refused").inner_text()
    assert "waiting for 1 more approval" in page.locator("p.gate").inner_text()
    assert decisions(world) == []


def test_a_form_forged_without_the_csrf_token_changes_nothing(
    person: Callable[[str | None], Page], world: RolloutWorld
) -> None:
    page = person("carol")
    to_the_gate(page)
    page.evaluate(
        """() => {
            const form = document.createElement('form');
            form.method = 'post';
            form.action = '/models/iris/actions';
            for (const [name, value] of [['command', 'approve'], ['version', '2']]) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }"""
    )
    page.wait_for_url("**/models/iris/actions")
    assert page.locator("h1").inner_text() == "403"
    assert "CSRF token is missing or wrong" in page.locator("p.error").inner_text()
    assert decisions(world) == []


def test_the_one_time_sign_in_signs_carol_in_by_her_login(
    person: Callable[[str | None], Page], site: str, world: RolloutWorld
) -> None:
    page = person(None)
    assert "not signed in" in page.locator("header .person").inner_text()
    page.goto(f"{site}/signin?token={TOKEN}")
    assert "signed in as cmiller" in page.locator("header .person").inner_text()
    to_the_gate(page)
    page.get_by_role("button", name="Approve").click()
    assert "carol approved iris v2 for production" in page.locator("p.flash.done").inner_text()
    assert decisions(world) == [("carol", "approve", "dashboard")]

"""Take the README's screenshots of the dashboard: headless Chromium over a store the rollout engine wrote.

Usage (from the repository root, with the test extras installed and Debian's
chromium): PYTHONPATH=. python docs/ui/screenshots.py

Builds state with the rollout engine as the tests do (tests/fixtures/rollout_world.py:
iris v1 in production and v2 waiting at production's approval gate, wine
beside it; then v2 approved on the dashboard and promoted, and v3's
failing canary rolled back), serves the dashboard with uvicorn behind a
stand-in for an authenticating proxy (the browser names the person in
X-Forwarded-User, 127.0.0.1 is the trusted proxy) and saves a PNG of each
main page next to this script, and one of alice's refused approval.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import uvicorn
from playwright.sync_api import Page, ViewportSize, sync_playwright

from controller.backends.metrics import Measurement
from controller.backends.metrics.fake import FakeMetrics
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.server import free_port
from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK, FakeClock
from controller.scaffold import scaffold
from controller.specs import load_tree
from controller.ui import create_app
from controller.ui.access import Access, networks
from tests.fixtures.rollout_world import RolloutWorld

HERE = Path(__file__).parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def waiting(scratch: Path) -> RolloutWorld:
    """iris v1 in production, v2 past its canary steps and waiting at production's approval gate; wine."""
    repo, state = scratch / "ml", scratch / "state"
    scaffold(repo)
    clock = FakeClock(SYSTEM_CLOCK.now() - timedelta(hours=2))
    store = open_store(state, clock=clock)
    world = RolloutWorld(repo, state, store, load_tree(repo), FakeServing(), FakeMetrics(), clock)
    world.to_canary(gap=600)
    world.good("v2")
    world.settle(seconds=11, ticks=8)
    for n in (1, 2):
        world.register(n, model="wine")
    return world


def rolled_back(world: RolloutWorld) -> None:
    """v2 (approved by carol) promoted; then v3's canary fails its rounds and is rolled back."""
    world.settle(seconds=11, ticks=12)
    world.clock.advance(600)
    world.engine().start(world.register(3), world.catalog.models["iris"], author="bob")
    world.settle(ticks=5)
    world.metrics.set("success-rate", "v3", Measurement(value=0.97, samples=120))
    world.metrics.set("latency-p99", "v3", Measurement(value=0.08, samples=120))
    world.metrics.set("enough-traffic", "v3", Measurement(value=120.0, samples=120))
    world.settle(seconds=11, ticks=6)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        world = waiting(Path(scratch))
        app = create_app(
            models=world.store,
            history=world.store,
            clock=world.clock,
            catalog=lambda: world.catalog,
            records=world.store,
            access=Access(trusted_proxies=networks(["127.0.0.1/32"])),
        )
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        site = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)

            def person(user: str) -> Page:
                viewport: ViewportSize = {"width": 1280, "height": 900}
                context = browser.new_context(
                    viewport=viewport, extra_http_headers={"X-Forwarded-User": user}
                )
                return context.new_page()

            tab, alice = person("carol"), person("alice")

            def save(page: Page, name: str) -> None:
                page.screenshot(path=str(HERE / f"{name}.png"))
                print(f"saved {HERE / f'{name}.png'}")

            def shoot(name: str, path: str) -> None:
                tab.goto(site + path)
                save(tab, name)

            shoot("approvals", "/approvals")
            gate = f"/rollouts/{world.store.rollouts_for('iris')[0].id}"
            alice.goto(site + gate)
            alice.get_by_role("button", name="Approve").click()
            save(alice, "refused")
            tab.goto(site + gate)
            tab.get_by_role("button", name="Approve").click()
            rolled_back(world)
            shoot("models", "/")
            shoot("model", "/models/iris")
            shoot("rollout", f"/rollouts/{world.store.rollouts_for('iris')[0].id}")
            shoot("audit", "/audit?model=iris")
            browser.close()
        server.should_exit = True
        world.store.close()


if __name__ == "__main__":
    main()

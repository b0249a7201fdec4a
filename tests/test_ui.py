"""The dashboard's pages show the store's facts: models, a model's lineage and serving, a rollout, approvals.

State is made by the real rollout engine on a real store
(:mod:`tests.fixtures.rollout_world`); the pages are read through
Starlette's test client, and each test asserts the facts a page shows (the
version, the weights, the measurements and thresholds, who approved, what
is missing), not only that it answers. Unknown names are 404 pages, and no
page holds a secret of the settings.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from click import ClickException
from click.testing import CliRunner
from starlette.testclient import TestClient

from controller.backends.metrics import Measurement
from controller.backends.serving.server import free_port
from controller.backends.store import open_store
from controller.cli import main
from controller.cli.ui import main_specs
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Actor
from controller.scaffold import scaffold
from controller.ui import LinkMaker, create_app
from tests.fixtures.rollout_world import RolloutWorld, rollout_world
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path) as world:
        yield world


def client(world: RolloutWorld, *, catalog: bool = True) -> TestClient:
    app = create_app(
        models=world.store,
        history=world.store,
        clock=world.clock,
        catalog=lambda: world.catalog if catalog else None,
        links=LinkMaker(github_repository="octo/ml-specs"),
    )
    return TestClient(app)


def text(html: str) -> str:
    """The page's text as people read it: tags dropped, white space folded."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def test_the_model_list_shows_each_model_its_latest_version_rollout_and_serving(world: RolloutWorld) -> None:
    world.good("v2")
    world.to_canary()
    world.register(1, model="wine")
    page = client(world).get("/")
    assert page.status_code == 200
    shown = text(page.text)
    assert "Models 2" in shown
    row = re.search(r"iris 2 v2 .*?(?=wine)", shown)
    assert row is not None, shown
    assert (
        "in progress" in row.group(0)
        and "production v1 80%" in row.group(0)
        and "production v2 20%" in row.group(0)
    )
    assert "wine 1 v1" in shown
    assert 'href="http://testserver/models/iris"' in page.text


def test_a_model_page_shows_versions_with_lineage_serving_and_what_served_at_a_time(
    world: RolloutWorld,
) -> None:
    world.good("v2")
    world.to_canary(gap=60)
    before_v2 = world.store.rollouts_for("iris")[0].created_at - timedelta(seconds=1)
    page = client(world).get("/models/iris")
    assert page.status_code == 200
    shown = text(page.text)
    assert "iris latest v2" in shown
    assert "production v1 80%" in shown and "production v2 20%" in shown
    v2 = shown[shown.index("v2 ", shown.index("Versions")) :]
    assert "2222222222" in v2 and "train sha256:data2" in v2 and "C=2" in v2 and "accuracy=0.92" in v2
    assert "env2" in v2 and "sha256:00000000000" in v2
    assert 'href="https://github.com/octo/ml-specs/commit/' + "2" * 40 + '"' in page.text
    assert "approval.approve" in shown and "carol" in shown  # the timeline
    assert "accuracy across versions" in page.text and "v2: accuracy = 0.92" in page.text
    then = text(client(world).get("/models/iris", params={"at": before_v2.isoformat()}).text)
    assert "production v1 100%" in then and "production v2" not in then


def test_a_rollout_page_charts_each_round_against_its_thresholds_and_shows_the_decision(
    world: RolloutWorld,
) -> None:
    world.to_canary()
    world.metrics.set("success-rate", "v2", Measurement(value=0.5, samples=100))
    world.metrics.set("latency-p99", "v2", Measurement(value=0.05, samples=100))
    world.metrics.set("enough-traffic", "v2", Measurement(value=100.0, samples=100))
    world.settle(seconds=11, ticks=6)
    rollout = world.store.rollouts_for("iris")[0]
    page = client(world).get(f"/rollouts/{rollout.id}")
    assert page.status_code == 200
    shown = text(page.text)
    assert f"Rollout #{rollout.id}: iris v2" in shown
    assert "rolled back" in shown and "success-rate" in shown
    assert "success-rate = 0.5 (needs ≥ 0.99) from 100 requests: failed" in shown
    assert "Why it ended" in shown
    # The chart: one per check, its min line at the spec's bound, a red dot per failed round.
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in page.text
    assert "success-rate: measurements against thresholds" in page.text and "min 0.99" in page.text
    assert 'class="failed"' in page.text
    assert "canary weights over time" in page.text
    data = client(world).get(f"/api/v1/rollouts/{rollout.id}").json()
    assert data["condition"] == "rolled_back" and data["rounds"][-1]["decision"] == "rollback"
    check = next(c for c in data["rounds"][-1]["checks"] if c["check"] == "success-rate")
    assert (check["value"], check["min"], check["outcome"]) == (0.5, 0.99, "failed")
    assert [w["weight"] for w in data["weights"] if w["environment"] == "production"][:1] == [20]
    assert data["weights"][-1]["weight"] == 0


def test_pending_approvals_name_the_rule_who_may_approve_and_what_is_missing(world: RolloutWorld) -> None:
    world.to_canary()
    world.good("v2")
    world.settle(seconds=11, ticks=8)
    pending = text(client(world).get("/approvals").text)
    assert "iris v2 production production-signoff business-owners nobody yet 1 alice" in pending
    rollout = world.store.rollouts_for("iris")[0]
    page = text(client(world).get(f"/rollouts/{rollout.id}").text)
    assert "waiting for 1 more approval from business-owners" in page
    assert "carol approved via cli" not in page  # carol approved v1, not v2
    # Without main's policy the gate still shows as waiting, saying who may approve is not known here.
    unknown = client(world, catalog=False).get("/api/v1/approvals/pending").json()["pending"]
    assert [(p["model"], p["version"], p["gate"]["rule"], p["gate"]["missing"]) for p in unknown] == [
        ("iris", 2, None, None)
    ]
    assert "main's policy was not read" in unknown[0]["gate"]["message"]
    assert world.commands().decide(Actor("cli", "carol"), decision="approve", model="iris", version=2).ok
    page = text(client(world).get(f"/rollouts/{rollout.id}").text)
    assert "carol approved via cli" in page
    world.settle(ticks=3)
    assert "nothing waits for an approval" in text(client(world).get("/approvals").text)


def test_the_audit_log_filters_by_model_person_action_and_time(world: RolloutWorld) -> None:
    world.good("v2")
    world.to_canary(gap=60)
    app = client(world)
    carol = text(app.get("/audit", params={"actor": "carol"}).text)
    assert "carol approval.approve iris v1 production" in carol
    assert "rollout.started" not in carol
    started = app.get("/api/v1/audit", params={"action": "rollout.started"}).json()["entries"]
    assert [(e["model"], e["version"]) for e in started] == [("iris", 2), ("iris", 1)]
    first = started[-1]["at"]
    later = app.get("/api/v1/audit", params={"action": "rollout.started", "since": started[0]["at"]}).json()
    assert [e["version"] for e in later["entries"]] == [2]
    earlier = app.get("/api/v1/audit", params={"action": "rollout.started", "until": started[0]["at"]}).json()
    assert [e["version"] for e in earlier["entries"]] == [1] and earlier["entries"][0]["at"] == first
    assert app.get("/api/v1/audit", params={"model": "wine"}).json()["entries"] == []


def test_unknown_names_are_404_pages_and_bad_parameters_400(world: RolloutWorld) -> None:
    world.register(1)
    app = client(world)
    page = app.get("/models/nope")
    assert page.status_code == 404 and "no model 'nope' in the registry" in text(page.text)
    assert app.get("/rollouts/999").status_code == 404
    assert app.get("/rollouts/x").status_code == 404
    assert app.get("/api/v1/models/nope").json() == {"error": "no model 'nope' in the registry"}
    assert app.get("/nowhere").status_code == 404
    assert app.get("/api/v1/nowhere").json() == {"error": "Not Found"}
    bad = app.get("/api/v1/models", params={"sort": "size"})
    assert bad.status_code == 400 and "sort='size' is not one of" in bad.json()["error"]
    assert app.get("/audit", params={"since": "yesterday"}).status_code == 400


def test_no_page_holds_a_secret(world: RolloutWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"FLYWHEEL_GITHUB_TOKEN": "ghp_not-to-be-shown", "FLYWHEEL_WEBHOOK_SECRET": "hook-secret-xyz"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    world.good("v2")
    world.to_canary()
    rollout = world.store.rollouts_for("iris")[0]
    app = client(world)
    pages = ["/", "/models/iris", f"/rollouts/{rollout.id}", "/proposals", "/approvals", "/audit"]
    apis = ["/api/v1/models", "/api/v1/models/iris", f"/api/v1/rollouts/{rollout.id}", "/api/v1/audit"]
    for path in pages + apis:
        answer = app.get(path)
        assert answer.status_code == 200, path
        for value in secrets.values():
            assert value not in answer.text, path


def test_drift_per_feature_is_shown_as_the_routers_report_it(world: RolloutWorld) -> None:
    world.register(1)
    table = {
        "environment": "production",
        "versions": [
            {
                "model": "iris",
                "version": "v1",
                "window": "current",
                "rows": 500,
                "settings": {"psi": {"alert": 0.2}},
                "features": [
                    {
                        "feature": "petal_length",
                        "kind": "numeric",
                        "samples": 500,
                        "psi": 0.41,
                        "test": "ks",
                        "p_value": 1e-9,
                        "threshold": 0.0125,
                        "status": "drift",
                        "sustained_windows": 3,
                    },
                    {
                        "feature": "sepal_width",
                        "kind": "numeric",
                        "samples": 500,
                        "psi": 0.01,
                        "test": "ks",
                        "p_value": 0.7,
                        "threshold": 0.0125,
                        "status": "stable",
                        "sustained_windows": 0,
                    },
                ],
            }
        ],
    }
    asked: list[str] = []

    def drift(model: str) -> list[dict[str, object]]:
        asked.append(model)
        return [table, {"environment": "staging", "error": "its router is not running"}]

    app = TestClient(create_app(models=world.store, history=world.store, clock=world.clock, drift=drift))
    shown = text(app.get("/models/iris/drift").text)
    assert "v1: latest window, 500 rows" in shown
    assert "petal_length numeric 500 0.4100 ks 1e-09 0.0125 drift 3" in shown
    assert "sepal_width numeric 500 0.0100 ks 0.7 0.0125 stable 0" in shown
    assert "staging its router is not running" in shown
    data = app.get("/api/v1/models/iris/drift").json()
    assert [f["status"] for f in data["environments"][0]["versions"][0]["features"]] == ["drift", "stable"]
    assert app.get("/api/v1/models/nope/drift").status_code == 404 and asked == ["iris", "iris"]
    without = text(client(world).get("/models/iris/drift").text)
    assert "drift is not read here" in without


def test_flywheel_ui_serves_the_state_directory_and_refuses_one_without_state(tmp_path: Path) -> None:
    refused = CliRunner().invoke(main, ["ui", "--state-dir", str(tmp_path / "none")])
    assert refused.exit_code == 1 and "no Flywheel state in" in refused.output
    state, port = tmp_path / "state", free_port()
    store = open_store(state, clock=SYSTEM_CLOCK)
    run = store.create_run(model="iris", ref="main", commit="a" * 40, cache_key="k")
    store.register_version(
        model="iris",
        run_id=run.id,
        commit=run.commit,
        artifact_digest="sha256:a",
        artifact_uri="/a",
        environment_hash="e",
    )
    store.close()
    flywheel = str(Path(sys.executable).with_name("flywheel"))
    command = [flywheel, "ui", "--state-dir", str(state), "--port", str(port)]  # no repository in its cwd
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        limit = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/models", timeout=2) as answer:
                    models = json.load(answer)
                    break
            except OSError:
                assert time.monotonic() < limit and process.poll() is None, process.communicate()[0]
                time.sleep(0.3)
        assert [m["model"] for m in models["models"]] == ["iris"] and models["models"][0]["latest"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert f"dashboard on http://127.0.0.1:{port}/" in output


def test_the_dashboard_reads_mains_specs_again_when_main_moves(tmp_path: Path) -> None:
    repo, state = tmp_path / "ml", tmp_path / "state"
    scaffold(repo)
    specs = main_specs(str(repo), None, state, required=True)
    first = specs()
    assert first is not None and first.models["iris"].rollout.stages[1].canary[0].weight == 20
    git = GitRepo(repo)
    git.edit("specs/iris/model.yaml", "- weight: 20", "- weight: 10")
    git.commit("a smaller first canary step")
    moved = specs()
    assert moved is not None and moved.models["iris"].rollout.stages[1].canary[0].weight == 10
    with pytest.raises(ClickException, match="not a git repository"):
        main_specs(str(tmp_path), None, state, required=True)
    assert main_specs(str(tmp_path), None, state, required=False)() is None

"""Promotion end to end on the embedded home: real git, real training, MLServer, routers, SQLite.

Pins down: ``flywheel demo`` finishes (v2 reaches production through a canary
under traffic after a business owner approves, both example models serve,
the dashboard shows them with their lineage and the rollout's analysis rounds,
and every process it started is gone afterwards); and ``kill -9`` of a ``flywheel run`` controller in the
middle of a canary step, then a restart, continues from the same step — the
step's timer kept, no second deployment of the version, no notification
announced twice — and reaches the approval gate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from controller.backends.local.processes import is_alive
from controller.backends.serving import inference_request
from controller.backends.store import RolloutRecord, open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.demo import DEMO_ROLLOUT, DemoOptions, run_demo
from controller.engine.rollout_state import load_state
from controller.scaffold import scaffold
from controller.settings import default_venv_cache
from controller.ui.app import create_app
from tests.fixtures.people import login_as
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")  # the console script of this environment


@pytest.mark.timeout(1200)
def test_demo_reaches_production_and_cleans_up(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    run_demo(DemoOptions(workdir=tmp_path / "demo", keep=True, echo=lines.append))
    elapsed = time.monotonic() - started
    output = "\n".join(lines)
    print(output, f"\ndemo took {elapsed:.0f}s")
    assert "Review report on tune-regularisation (success)" in output
    assert "reused run" in output  # v2 is the proposal's run: what was reviewed ships
    assert "refused" in output and "carol approved iris v2 for production" in output
    store = open_store(tmp_path / "demo" / "state", clock=SYSTEM_CLOCK)
    try:
        rollouts = {r.version: r for r in store.rollouts_for("iris")}
        assert rollouts[2].state == "succeeded"
        assert store.served_at(environment="production", model="iris", at=_now()) == [(2, 100)]
        weights = [
            r.weight for r in store.serving_history(environment="production", model="iris") if r.version == 2
        ]
        assert weights[:3] == [20, 50, 100]  # through both canary steps
        assert store.served_at(environment="production", model="breast-cancer", at=_now()) == [(1, 100)]
        _dashboard_shows_the_demo(store, rollout=rollouts[2].id)
    finally:
        store.close()
    assert not _live_processes(tmp_path / "demo" / "state" / "serving")


def _dashboard_shows_the_demo(store: SqlStore, *, rollout: int) -> None:
    """What ``flywheel ui`` shows after ``flywheel demo --keep``: both models, lineage, analysis rounds."""
    client = TestClient(create_app(models=store, history=store, clock=SYSTEM_CLOCK))
    listed = client.get("/api/v1/models").json()
    assert sorted(item["model"] for item in listed["models"]) == ["breast-cancer", "iris"]
    for model, newest in (("iris", 2), ("breast-cancer", 1)):
        detail = client.get(f"/api/v1/models/{model}").json()
        assert detail["versions"][0]["version"] == newest, model
        assert all(v["commit"] and v["artifact_digest"] and v["metrics"] for v in detail["versions"]), model
    shown = client.get(f"/api/v1/rollouts/{rollout}").json()
    assert shown["condition"] == "succeeded" and shown["rounds"], shown
    assert all(r["checks"] for r in shown["rounds"])
    page = client.get(f"/rollouts/{rollout}")
    assert page.status_code == 200 and "success-rate" in page.text


@pytest.mark.timeout(1200)
def test_kill_9_mid_canary_resumes_the_same_step_without_repeating(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    _tune(repo)
    login_as(repo, "carol")  # the CLI approves as carol: whoever runs the tests is carol
    state = tmp_path / "state"
    logs: list[Path] = []
    handles = []

    def start() -> subprocess.Popen[bytes]:
        log = tmp_path / f"controller-{len(logs)}.log"
        logs.append(log)
        handles.append(log.open("wb"))
        return subprocess.Popen(
            [
                FLYWHEEL,
                "run",
                "--repo",
                str(repo.path),
                "--state-dir",
                str(state),
                "--venv-dir",
                str(default_venv_cache()),
                "--interval",
                "1",
            ],
            stdout=handles[-1],
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    controller = start()
    stop_traffic = threading.Event()
    try:
        rollout = _wait(state, lambda r: r.get(1) is not None and r[1].state == "gate", "v1 at the gate", 600)
        assert rollout is not None
        _cli(repo, state, "approve", "iris", "1", "--as", "carol")
        _wait(state, lambda r: r[1].state == "succeeded", "v1 in production", 120)

        repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 2.0\n")
        repo.git("commit", "-qam", "iris: C 2.0")
        threading.Thread(target=_traffic, args=(state, stop_traffic), daemon=True).start()
        _wait(state, lambda r: r.get(2) is not None and r[2].state == "canary", "v2 in its canary", 300)
        time.sleep(3)  # inside step 0: weights routed, a round or two judged
        before = _rollouts(state)[2]
        assert (before.state, before.step_index) == ("canary", 0)
        pid_before = _server_pids(state, "production")
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=30)

        controller = start()
        _wait(state, lambda r: r[2].state == "gate" or r[2].step_index == 1, "v2 to go on", 180)
        _wait(state, lambda r: r[2].state == "gate", "v2 at the gate", 180)
    finally:
        stop_traffic.set()
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=60)
        for handle in handles:
            handle.close()

    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        deployed = [e for e in store.audit(model="iris") if e.action == "rollout.deployed" and e.version == 2]
        assert [e.environment for e in deployed] == ["staging", "production"]  # once each, never again
        step0 = [
            e
            for e in store.audit(model="iris")
            if e.action == "rollout.transition"
            and e.version == 2
            and e.detail.get("to") == "canary"
            and e.detail.get("step") == 0
        ]
        assert len(step0) == 1  # the restart did not enter step 0 a second time
    finally:
        store.close()
    assert _server_pids(state, "production")["v2"] == pid_before["v2"]  # the same server process
    console = "".join(log.read_text() for log in logs)
    assert console.count("iris v2 in production: step_reached") == 2  # one per step, none repeated
    assert console.count("iris v2 in staging: rollout_started") == 1
    _shutdown_serving(state)


# ----------------------------------------------------------------- helpers


def _tune(repo: GitRepo) -> None:
    text = repo.read("specs/iris/model.yaml")
    start, end = text.index("  rollout:\n"), text.index("  notifications:\n")
    repo.write("specs/iris/model.yaml", text[:start] + DEMO_ROLLOUT + text[end:])
    repo.git("commit", "-qam", "short canary steps")  # the routers' ports are chosen per state directory


def _cli(repo: GitRepo, state: Path, *args: str) -> str:
    done = subprocess.run(
        [FLYWHEEL, *args, "--repo", str(repo.path), "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rollouts(state: Path) -> dict[int, RolloutRecord]:
    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        return {r.version: r for r in store.rollouts_for("iris")}
    finally:
        store.close()


def _wait(
    state: Path, condition: Callable[[dict[int, RolloutRecord]], bool], what: str, timeout: float
) -> dict[int, RolloutRecord]:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        rollouts = _rollouts(state) if (state / "state.db").exists() else {}
        try:
            if condition(rollouts):
                return rollouts
        except KeyError:
            pass
        for rollout in rollouts.values():
            assert rollout.state not in ("failed", "rolled_back", "aborted"), load_state(rollout).outcome
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {_rollouts(state)}")


def _traffic(state: Path, stop: threading.Event) -> None:
    done = subprocess.run(
        [FLYWHEEL, "serving", "ls", "--env", "production", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    url = json.loads(done.stdout)[0]["models"]["iris"]["url"] + "/infer"
    body = json.dumps(inference_request([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])).encode()
    while not stop.is_set():
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except OSError:
            stop.wait(0.2)
        stop.wait(0.02)


def _server_pids(state: Path, environment: str) -> dict[str, int]:
    pids = {}
    for record in (state / "serving" / environment / "servers" / "iris").glob("*/server.json"):
        data = json.loads(record.read_text())
        pids[record.parent.name] = int(data["pid"])
    return pids


def _live_processes(serving: Path) -> list[int]:
    live = []
    for record in serving.glob("**/*.json"):
        try:
            data = json.loads(record.read_text())
        except ValueError:
            continue
        known = isinstance(data, dict) and "pid" in data and "process_start" in data
        if known and is_alive(int(data["pid"]), data["process_start"]):
            live.append(int(data["pid"]))
    return live


def _shutdown_serving(state: Path) -> None:
    from controller.backends.serving.local import LocalServing

    LocalServing(state / "serving", clock=SYSTEM_CLOCK).shutdown()


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    for serving in tmp_path.glob("**/serving"):
        if serving.is_dir():
            _shutdown_serving(serving.parent)

"""Kill drill on the embedded home: ``kill -9`` of the controller at every transition of two rollouts.

Pins down DESIGN.md's invariant 5 (killing the controller at any moment loses
nothing and repeats nothing) where it is hardest: a ``flywheel run``
controller is SIGKILLed the moment the drill (polling the store every 50 ms)
sees a new rollout audit entry (started, transition, deployed, promoted) of
``iris`` v1 or v2 — after the record is written, before or during the side
effect it announces — and restarted every time (entries written within one
poll count once: 17 kills in a typical run). v1 goes to production through staging and its
approval gate, v2 through a two-step canary under traffic. At the end:
exactly one version per merged commit, each version deployed once per
environment, every transition entered once, each notification announced
once, the approval kept, no good version rolled back, and one live model
server per version and environment (no doubled process from a launch the
kill cut short).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK
from controller.scaffold import scaffold
from controller.settings import default_venv_cache
from tests.e2e.test_promotion import FLYWHEEL, _cli, _shutdown_serving, _traffic, _tune
from tests.fixtures.people import login_as
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e

KILLED_AT = ("rollout.started", "rollout.transition", "rollout.deployed", "rollout.promoted")


class Drill:
    """A ``flywheel run`` controller on ``repo`` that the drill kills and starts again."""

    def __init__(self, repo: GitRepo, workdir: Path) -> None:
        self.repo = repo
        self.workdir = workdir
        self.state = workdir / "state"
        self.logs: list[Path] = []
        self._handles: list[IO[bytes]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.killed_at: list[str] = []
        self._seen: set[int] = set()

    def start(self) -> None:
        log = self.workdir / f"controller-{len(self.logs)}.log"
        self.logs.append(log)
        self._handles.append(log.open("wb"))
        argv = [FLYWHEEL, "run", "--repo", str(self.repo.path), "--state-dir", str(self.state)]
        argv += ["--venv-dir", str(default_venv_cache()), "--interval", "1"]
        self.process = subprocess.Popen(
            argv,
            stdout=self._handles[-1],
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill_and_restart(self, why: str) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.killed_at.append(why)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        for handle in self._handles:
            handle.close()

    def run_until(self, version: int, state: str, timeout: float) -> None:
        """Kill and restart at each new rollout audit entry until ``version``'s rollout is in ``state``."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            assert self.process is not None
            assert self.process.poll() is None, self.console()[-3000:]
            if (self.state / "state.db").exists():
                fresh, current = self._poll(version)
                if fresh is not None:
                    self.kill_and_restart(fresh)
                    continue
                if current == state:
                    return
                assert current not in ("failed", "rolled_back", "aborted"), self.console()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for v{version} to be {state}; killed at {self.killed_at}")

    def _poll(self, version: int) -> tuple[str | None, str | None]:
        store = open_store(self.state, clock=SYSTEM_CLOCK)
        try:
            fresh = None
            for entry in store.audit(model="iris"):
                if entry.action in KILLED_AT and entry.id not in self._seen:
                    self._seen.add(entry.id)
                    fresh = fresh or f"v{entry.version} {entry.action} {entry.environment} {entry.detail}"
            rollouts = {r.version: r.state for r in store.rollouts_for("iris")}
        finally:
            store.close()
        return fresh, rollouts.get(version)

    def console(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)


@pytest.mark.timeout(1800)
def test_kill_9_at_every_rollout_transition_repeats_and_loses_nothing(tmp_path: Path, drill: Drill) -> None:
    drill.start()
    drill.run_until(1, "gate", 900)
    _cli(drill.repo, drill.state, "approve", "iris", "1", "--as", "carol")
    drill.run_until(1, "succeeded", 300)

    drill.repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 2.0\n")
    drill.repo.git("commit", "-qam", "iris: C 2.0")
    stop_traffic = threading.Event()
    threading.Thread(target=_traffic, args=(drill.state, stop_traffic), daemon=True).start()
    try:
        drill.run_until(2, "gate", 600)
        _cli(drill.repo, drill.state, "approve", "iris", "2", "--as", "carol")
        drill.run_until(2, "succeeded", 300)
    finally:
        stop_traffic.set()
    drill.stop()
    print(f"killed {len(drill.killed_at)} times:", *drill.killed_at, sep="\n  ")
    assert len(drill.killed_at) >= 12  # every transition of both rollouts, not a lucky few

    store = open_store(drill.state, clock=SYSTEM_CLOCK)
    try:
        assert [v.number for v in store.list_versions("iris")] == [1, 2]  # one version per merged commit
        audit = store.audit(model="iris")
        deployed = Counter((e.version, e.environment) for e in audit if e.action == "rollout.deployed")
        assert deployed == {(1, "staging"): 1, (1, "production"): 1, (2, "staging"): 1, (2, "production"): 1}
        entered = Counter(
            (e.version, e.environment, e.detail.get("to"), e.detail.get("step"))
            for e in audit
            if e.action == "rollout.transition"
        )
        assert entered and max(entered.values()) == 1, entered  # no transition entered twice
        assert not [e for e in audit if e.action == "rollout.rolled_back"]
        for version in (1, 2):
            kept = store.approvals_for(model="iris", version=version, environment="production")
            assert [(a.user, a.decision) for a in kept] == [("carol", "approve")]
        assert {r.version: r.state for r in store.rollouts_for("iris")} == {1: "succeeded", 2: "succeeded"}
    finally:
        store.close()

    console = drill.console()
    for line in ("iris v1 in staging: rollout_started", "iris v2 in staging: rollout_started"):
        assert console.count(line) == 1, line
    assert console.count("iris v2 in production: step_reached") == 2  # one per canary step
    servers = _model_servers(drill.state)
    assert servers["production"].get("v2") == 1 and servers["staging"].get("v2") == 1, servers
    assert all(count == 1 for versions in servers.values() for count in versions.values()), servers


def _model_servers(state: Path) -> dict[str, dict[str, int]]:
    """Live model-server process groups under ``state``'s serving directory, by environment and version."""
    servers = (state / "serving").resolve()
    found: dict[str, Counter[str]] = {}
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = Path(process.info["cwd"] or "/")
            leader = os.getpgid(process.pid) == process.pid
        except (psutil.Error, OSError):
            continue
        if leader and cwd.is_relative_to(servers) and "servers" in cwd.relative_to(servers).parts:
            environment, _, _, version = cwd.relative_to(servers).parts[:4]
            found.setdefault(environment, Counter())[version] += 1
    return {environment: dict(versions) for environment, versions in found.items()}


@pytest.fixture
def drill(tmp_path: Path) -> Iterator[Drill]:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    _tune(repo)
    login_as(repo, "carol")  # the CLI approves as carol: whoever runs the tests is carol
    drill = Drill(repo, tmp_path)
    try:
        yield drill
    finally:
        drill.stop()
        if (drill.state / "serving").is_dir():
            _shutdown_serving(drill.state)

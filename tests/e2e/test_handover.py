"""Two controllers, one PostgreSQL, one Lease: the leader dies mid-canary and the other finishes the rollout.

Pins down issue 16's "done when": two controllers built as ``flywheel run``
builds them (:func:`controller.app.build_controller`, state in one PostgreSQL
database through ``FLYWHEEL_DATABASE_URL``, each with its own state
directory) elect a leader on one Lease of the stand-in Kubernetes API, and
serve through one serving backend, as the cluster's would be shared. Only the
leader's passes act. v1 goes to production; v2 is at its first canary step
when the leader stops without releasing the Lease (as a killed pod). The
other takes over once the Lease has run out by the shared clock, within one
lease duration, resumes the rollout from the store and finishes it after
carol's approval: each version deployed once per environment, each outbox
message (notification, approval request) queued and sent once, one
approval request for v2, and nothing done by the follower before it led.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.app import Controller, build_controller
from controller.backends.leader.lease import LeaseLeadership
from controller.backends.notify.console import JOURNAL_NAME
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.cli import main
from controller.clock import FakeClock
from controller.engine.leadership import Term
from controller.scaffold import scaffold
from controller.settings import ENV_DATABASE_URL, ControllerSettings, Settings
from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_leases import FakeLeases, with_leases
from tests.fixtures import T0
from tests.fixtures.people import login_as
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 15
ROLLOUT = """  rollout:
    stages:
      - environment: staging
      - environment: production
        canary:
          - weight: 20
            duration: 60s
          - weight: 50
            duration: 60s
        approval: production-signoff
"""


@dataclass
class Replica:
    name: str
    controller: Controller
    term: Term
    alive: bool = True

    def step(self) -> None:
        """One pass of ``flywheel run``'s loop as its term sees it: only a leader's pass acts."""
        if not self.alive:
            return
        self.term.step()
        if self.controller.leading():
            self.controller.reconcile_requested()
            self.controller.proposals.reconcile()
            self.controller.proposals.collect()
            self.controller.tick()


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    work = GitRepo(tmp_path / "ml")
    scaffold(work.path)
    text = work.read("specs/iris/model.yaml")
    start, end = text.index("  rollout:\n"), text.index("  notifications:\n")
    work.write("specs/iris/model.yaml", text[:start] + ROLLOUT + text[end:])
    work.git("commit", "-qam", "a canary without analysis: steps pass on their duration")
    login_as(work, "carol")  # the CLI approves as carol: whoever runs the tests is carol
    return work


def _replica(name: str, *, repo: GitRepo, tmp_path: Path, pg_url: str, kube: FakeKube, clock: FakeClock,
             serving: FakeServing) -> Replica:  # fmt: skip
    settings = Settings(
        controller=ControllerSettings(repo=str(repo.path), state_dir=tmp_path / name), database_url=pg_url
    )
    controller = build_controller(settings, serving=serving, clock=clock)
    controller.proposals.runners = {
        "local": FakeRunner({"evaluate": ScriptedStep(metrics={"accuracy": 0.97, "log_loss": 0.1})})
    }
    lease = LeaseLeadership(
        kube.api_client(),
        name="flywheel-controller",
        namespace="ml",
        identity=name,
        duration_seconds=LEASE_SECONDS,
        clock=clock,
    )
    term = Term(lease, renew_seconds=LEASE_SECONDS / 3)
    controller.leading = term.leading
    return Replica(name, controller, term)


def _run(replicas: list[Replica], clock: FakeClock, *, until: Callable[[], bool], passes: int = 200) -> None:
    for _ in range(passes):
        for replica in replicas:
            replica.step()
        if until():
            return
        clock.advance(seconds=5)
    store = replicas[0].controller.store
    runs = [(r.ref, r.status, r.error) for r in store.list_runs()]
    rollouts = [(r.version, r.state, r.step_index, r.detail) for r in store.rollouts_for("iris")]
    audit = [(e.action, e.version, e.environment, e.detail) for e in store.audit(model="iris")][-8:]
    raise AssertionError(f"the rollout did not get there: runs {runs}, rollouts {rollouts}, audit {audit}")


def _rollout_state(replica: Replica, version: int) -> tuple[str, int]:
    for rollout in replica.controller.store.rollouts_for("iris"):
        if rollout.version == version:
            return rollout.state, rollout.step_index
    return "", -1


def _journals(tmp_path: Path) -> list[tuple[str, str]]:
    """What the two replicas' consoles announced: (key, line) each."""
    paths = [tmp_path / name / JOURNAL_NAME for name in ("pod-a", "pod-b")]
    lines = [line for path in paths if path.exists() for line in path.read_text().splitlines()]
    return [(key, text) for key, _, text in (line.partition("\t") for line in lines)]


def _asked(tmp_path: Path, version: int) -> bool:
    """Whether the approval of ``version`` for production was asked for (and announced)."""
    return any(
        text.startswith(f"iris v{version} in production: awaiting_approval")
        for _, text in _journals(tmp_path)
    )


def _approve(repo: GitRepo, tmp_path: Path, pg_url: str, version: int) -> None:
    where = ["--repo", str(repo.path), "--state-dir", str(tmp_path / "cli")]
    result = CliRunner().invoke(
        main, ["approve", "iris", str(version), "--as", "carol", *where], env={ENV_DATABASE_URL: pg_url}
    )
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(300)
def test_killing_the_leader_mid_canary_hands_over_within_the_lease_and_repeats_nothing(
    repo: GitRepo, tmp_path: Path, pg_url: str, kube: FakeKube
) -> None:
    leases: FakeLeases = with_leases(kube)
    clock = FakeClock(T0)
    serving = FakeServing()
    a = _replica(
        "pod-a", repo=repo, tmp_path=tmp_path, pg_url=pg_url, kube=kube, clock=clock, serving=serving
    )
    b = _replica(
        "pod-b", repo=repo, tmp_path=tmp_path, pg_url=pg_url, kube=kube, clock=clock, serving=serving
    )
    replicas = [a, b]
    store = a.controller.store
    try:
        _run(replicas, clock, until=lambda: _asked(tmp_path, 1))
        assert a.term.leading() and not b.term.leading()
        assert not b.controller.proposals.runners["local"].requests  # type: ignore[attr-defined]
        _approve(repo, tmp_path, pg_url, 1)
        _run(replicas, clock, until=lambda: _rollout_state(a, 1)[0] == "succeeded")

        repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 2.0\n")
        repo.git("commit", "-qam", "iris: C 2.0")
        _run(replicas, clock, until=lambda: _rollout_state(a, 2) == ("canary", 0))

        assert not (tmp_path / "pod-b" / JOURNAL_NAME).exists()  # the follower announced nothing
        a.alive = False  # killed: no release, no more passes
        killed_at = clock.now()
        _run(replicas, clock, until=lambda: b.term.leading())
        assert (clock.now() - killed_at).total_seconds() <= LEASE_SECONDS + 5  # one renewal period of slack
        spec = leases.spec("flywheel-controller", "ml")
        assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)

        _run(replicas, clock, until=lambda: _asked(tmp_path, 2))
        _approve(repo, tmp_path, pg_url, 2)
        _run(replicas, clock, until=lambda: _rollout_state(b, 2)[0] == "succeeded")

        deploys = Counter((c.environment, c.version) for c in serving.calls if c.method == "deploy")
        assert deploys == {
            ("staging", "v1"): 1,
            ("production", "v1"): 1,
            ("staging", "v2"): 1,
            ("production", "v2"): 1,
        }
        audit = store.audit(model="iris")
        deployed = Counter((e.version, e.environment) for e in audit if e.action == "rollout.deployed")
        assert set(deployed.values()) == {1} and len(deployed) == 4
        entered = Counter(
            (e.version, e.environment, e.detail.get("to"), e.detail.get("step"))
            for e in audit
            if e.action == "rollout.transition"
        )
        assert entered and max(entered.values()) == 1, entered
        messages = store.due_messages(now=clock.now(), limit=1000)
        assert messages == []  # everything queued was delivered
        announced = _journals(tmp_path)
        keys = [key for key, _ in announced]
        assert len(keys) == len(set(keys)), announced  # each message announced once, by one replica
        requests = [
            text for _, text in announced if text.startswith("iris v2 in production: awaiting_approval")
        ]
        assert len(requests) == 1, announced
        steps = [text for _, text in announced if text.startswith("iris v2 in production: step_reached")]
        assert len(steps) == 2, announced  # one per canary step...
        by_b = (tmp_path / "pod-b" / JOURNAL_NAME).read_text()
        assert (
            "step_reached — Canary step 2 of 2" in by_b and "Canary step 1 of 2" not in by_b
        )  # ...the 2nd by b
    finally:
        for replica in replicas:
            replica.term.stop(release=replica.alive)
            replica.controller.close()

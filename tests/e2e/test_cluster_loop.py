"""End to end on the cluster home: the demo's whole loop, every environment on Argo, KServe and PostgreSQL.

Pins down issue 16's first "done when" on a repository made with ``flywheel
init --home cluster``, its staging and production environments pointed at
the stand-ins: pipelines on the stand-in Argo Server
(``tests/fakes/argo_server.py``), serving on the stand-in KServe
(``tests/fakes/kserve_api.py``: an InferenceService per environment whose
revisions are real MLServer processes serving the trained model, behind a
router that honours ``canaryTrafficPercent``), analysis from a real
Prometheus scraping the revisions' queue-proxy metrics, and the state in a
real PostgreSQL (``FLYWHEEL_DATABASE_URL``). The controller is the one
``flywheel run`` builds (:func:`controller.app.build_controller`, given the
fake image builder), driven pass by pass as its loop drives it.

The loop: main's model becomes v1 and reaches production whole (nothing to
canary against) after carol's approval. A param change on a branch is
trained on Argo and reported; merged, it becomes v2, whose lineage names the
image it was trained in; v2 goes to staging on KServe, then to production
through both canary steps under generated traffic, each round analysed from
Prometheus; carol (a business owner, whom the policy allows) approves
through the command line, alice (not one) is refused; and production's
InferenceService then routes all traffic to v2's revision, as its
``status.components.predictor`` says. Then v3, a model that fails on part of
the inputs (a zero feature), rolls back on its own from Prometheus' success
rate, production serving v2 again; and with Prometheus stopped, v4's canary
holds at its first step and is never promoted. Skipped without Prometheus
or PostgreSQL (failed in CI); MLServer's virtualenv comes from the cache of
``FLYWHEEL_VENV_CACHE`` (built there the first time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from controller import scaffold
from controller.app import Controller, build_controller
from controller.backends.images.fake import FakeImages
from controller.backends.local.venvs import VenvCache
from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import inference_request
from controller.backends.store import RolloutRecord
from controller.cli import main
from controller.engine.commands import Actor
from controller.engine.rollout_state import load_state
from controller.settings import (
    ENV_DATABASE_URL,
    ArgoSettings,
    ControllerSettings,
    Settings,
    default_venv_cache,
)
from tests.fakes.argo_server import FakeArgoServer
from tests.fixtures.kserve import Cluster, kserve_cluster
from tests.fixtures.people import login_as
from tests.fixtures.required import program
from tests.gitrepo import GitRepo
from tests.test_metrics_prometheus import PrometheusServer

pytestmark = pytest.mark.e2e

TEMPLATE = Path(scaffold.__file__).parent / "template"
TOKEN = "s3cret"
CLAIM = "flywheel-artifacts"
ENVIRONMENT = """\
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata:
  name: {name}
spec:
  home: cluster{production}
  pipeline:
    runner: argo
    namespace: ml-pipelines
    argo:
      server: {argo}
      serviceAccount: flywheel-steps
      token: {{env: ARGO_TOKEN}}
  images:
    registry: registry.test:5000
    repository: ml
    baseImage: python:3.11-slim
  artifacts:
    pvc: {{claimName: {claim}, mountPath: /artifacts}}
  serving:
    backend: kserve
    namespace: ml-{name}
  metrics:
    source: prometheus
    prometheusUrl: {prometheus}
"""
# the demo's stages, with canary steps and analysis rounds short enough for a test
ROLLOUT = """  rollout:
    stages:
      - environment: staging
      - environment: production
        canary:
          - weight: 20
            duration: 10s
          - weight: 50
            duration: 10s
        approval: production-signoff
    analysis:
      interval: 4s
      failureLimit: 2
      noData: inconclusive
      checks:
        - name: success-rate
          builtin: successRate
          min: 0.99
        - name: latency-p99
          builtin: latency
          percentile: 99
          max: 2.0
        - name: enough-traffic
          builtin: requestCount
          min: 5
"""
# v3's model: logistic regression on the features' logarithms, as good on the holdout, but an input with
# a zero feature becomes -inf and scikit-learn refuses it: the version fails on part of its inputs
LOG_FEATURES = """\
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
model = make_pipeline(
    FunctionTransformer(np.log), LogisticRegression(C=p.get("C", 1.0), max_iter=int(p.get("max_iter", 200)))
)
model.fit(X_train, y_train)
"""
FIT = """model = LogisticRegression(C=p.get("C", 1.0), max_iter=int(p.get("max_iter", 200)))
model.fit(X_train, y_train)
"""
STEP_SECONDS = 10  # each canary step's duration in ROLLOUT
ROWS = (  # what production receives: two ordinary flowers and one measured with a zero petal width
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.8, 2.7, 4.1, 0.0],
)


@pytest.fixture
def prometheus_program() -> None:
    program("prometheus")


@pytest.fixture
def argo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArgoServer]:
    monkeypatch.setenv("ARGO_TOKEN", TOKEN)
    with FakeArgoServer(token=TOKEN) as server:
        server.claim(CLAIM)
        yield server


@pytest.fixture
def cluster(prometheus_program: None, argo: FakeArgoServer, tmp_path: Path) -> Iterator[Cluster]:
    """The stand-in Kubernetes API and KServe; revisions served by MLServer from the steps' claim."""
    requirements = (
        TEMPLATE / "specs" / "iris" / "requirements.txt"
    ).read_text()  # what `flywheel init` writes
    with kserve_cluster(
        tmp_path,
        claims=argo.claim(CLAIM).parent,
        environment=PythonEnvironment(requirements=requirements, python="3.11"),
        venvs=VenvCache(default_venv_cache()),
        ready_timeout_seconds=300,
    ) as started:
        yield started


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[PrometheusServer]:
    (tmp_path / "prometheus").mkdir()
    server = PrometheusServer(tmp_path / "prometheus", scrape_target=cluster.kserve.metrics_target)
    try:
        server.wait_until('up{job="flywheel"} == 1', seconds=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def repo(tmp_path: Path, argo: FakeArgoServer, prometheus: PrometheusServer) -> GitRepo:
    """``flywheel init --home cluster``, its environments' placeholders replaced with the stand-ins."""
    result = CliRunner().invoke(main, ["init", "--home", "cluster", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    work = GitRepo(tmp_path / "ml")
    for name, production in (("staging", ""), ("production", "\n  production: true")):
        text = ENVIRONMENT.format(
            name=name, production=production, argo=argo.url, claim=CLAIM, prometheus=prometheus.url
        )
        work.write(f"environments/{name}.yaml", text)
    spec = work.read("specs/iris/model.yaml")
    start, end = spec.index("  rollout:\n"), spec.index("  notifications:\n")
    work.write("specs/iris/model.yaml", spec[:start] + ROLLOUT + spec[end:])
    work.commit("Serve on the cluster: Argo, KServe, Prometheus")
    login_as(work, "carol")  # the CLI approves as carol: whoever runs the tests is carol
    return work


@dataclass
class Loop:
    """The controller ``flywheel run`` builds, driven pass by pass as its loop drives it."""

    controller: Controller
    repo: GitRepo
    cli_state: Path
    pg_url: str
    last_fetch: float = 0.0

    def step(self) -> None:
        controller = self.controller
        if time.monotonic() - self.last_fetch >= 1.0:  # every --interval: fetch and reconcile every proposal
            controller.repository.fetch()
            controller.proposals.reconcile()
            self.last_fetch = time.monotonic()
        controller.proposals.collect()
        controller.tick()

    def until(self, done: Callable[[], bool], what: str, seconds: float = 240) -> None:
        limit = time.monotonic() + seconds
        while not done():
            failed = [r for r in self.controller.store.list_runs(model="iris") if r.status == "failed"]
            assert not failed, f"a run failed while waiting for {what}: {self.describe()}"
            if time.monotonic() > limit:
                raise AssertionError(f"timed out waiting for {what}: {self.describe()}")
            self.step()
            time.sleep(0.2)

    def rollout(self, version: int) -> RolloutRecord | None:
        return next((r for r in self.controller.store.rollouts_for("iris") if r.version == version), None)

    def at(self, version: int, state: str, environment: str) -> bool:
        rollout = self.rollout(version)
        if rollout is None:
            return False
        assert rollout.state not in ("failed", "aborted"), load_state(rollout)
        return rollout.state == state and rollout.stages[rollout.stage_index] == environment

    def finished(self, version: int) -> bool:
        rollout = self.rollout(version)
        return rollout is not None and rollout.finished_at is not None

    def held(self, version: int, *, rounds: int) -> bool:
        """Whether ``version``'s canary step has had ``rounds`` analysis rounds and outlasted its duration."""
        rollout = self.rollout(version)
        if rollout is None or rollout.state != "canary":
            return True  # moved on: the caller's assertions say how
        step = load_state(rollout).canary
        if step is None or step.started_at is None or step.rounds < rounds:
            return False
        return (self.controller.clock.now() - step.started_at).total_seconds() > STEP_SECONDS

    def describe(self) -> str:
        store = self.controller.store
        runs = [(r.id, r.ref, r.status, r.error) for r in store.list_runs(model="iris")]
        rollouts = [(r.version, r.state, r.stage_index, r.step_index) for r in store.rollouts_for("iris")]
        audit = [(e.action, e.version, e.environment, e.detail) for e in store.audit(model="iris")][-8:]
        return f"runs {runs}, rollouts {rollouts}, audit {audit}"

    def cli(self, *args: str) -> Result:
        where = ["--repo", str(self.repo.path), "--state-dir", str(self.cli_state)]
        return CliRunner().invoke(main, [*args, *where], env={ENV_DATABASE_URL: self.pg_url})

    def review(self, branch: str) -> str:
        """``flywheel review show``'s report on ``branch``; empty while there is none."""
        result = CliRunner().invoke(
            main,
            ["review", "show", branch, "--state-dir", str(self.cli_state)],
            env={ENV_DATABASE_URL: self.pg_url},
        )
        if result.exit_code != 0:
            assert f"no review for {branch}" in result.output, result.output
            return ""
        return str(result.output)


@dataclass
class Traffic:
    """Requests through production's InferenceService while the block runs: ROWS, over and over."""

    cluster: Cluster
    stop: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[int | None, int, str]] = field(default_factory=list)  # canary %, status, revision

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                document = production(self.cluster)
                percent = document["spec"]["predictor"].get("canaryTrafficPercent")
                url = f"{document['status']['url']}/v2/models/iris/infer"
                for row in ROWS:
                    with contextlib.suppress(httpx.HTTPError):  # a cut-off request: the rest counts
                        answer = http.post(url, json=inference_request([row]))
                        revision = answer.json().get("model_version", "") if answer.status_code == 200 else ""
                        self.seen.append((percent, answer.status_code, revision))
                self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def production(cluster: Cluster) -> dict[str, Any]:
    """Production's InferenceService as the stand-in KServe reports it (under its lock, as its API does)."""
    with cluster.kserve._lock:
        return cluster.kserve._view(cluster.kserve.services[("ml-production", "iris")])


def serving_version(cluster: Cluster, document: dict[str, Any]) -> dict[str, int]:
    """Which versions' artifacts get the traffic, by ``status.components.predictor.traffic``."""
    with cluster.kserve._lock:
        revisions = {r.name: r for s in cluster.kserve.services.values() for r in s.revisions}
    shares: Counter[str] = Counter()
    for entry in document["status"]["components"]["predictor"]["traffic"]:
        uri = revisions[entry["revisionName"]].predictor["model"]["storageUri"]
        shares[uri.rsplit("/", 1)[-1]] += entry["percent"]
    return {v: w for v, w in shares.items() if w}


def analysis_rounds(loop: Loop, version: int) -> list[dict[str, Any]]:
    """The verdicts of ``version``'s analysis rounds, as audited."""
    entries = loop.controller.store.audit(model="iris")
    return [e.detail["verdict"] for e in entries if e.action == "analysis.round" and e.version == version]


def figures(verdict: dict[str, Any]) -> dict[str, float]:
    """Each check's figure in one round, from Prometheus."""
    return {r["check"]: r["value"] for r in verdict["results"] if r["value"] is not None}


def answered_by(cluster: Cluster, requests: int) -> set[str]:
    """The revisions that answer ``requests`` inferences through production's InferenceService."""
    url = f"{production(cluster)['status']['url']}/v2/models/iris/infer"
    with httpx.Client(timeout=10) as http:
        return {
            http.post(url, json=inference_request([ROWS[0]])).json()["model_version"] for _ in range(requests)
        }


def merge(repo: GitRepo, branch: str) -> None:
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "-m", f"Merge {branch}", branch)


@pytest.mark.timeout(900)
def test_the_whole_loop_on_the_cluster_home_rolls_out_rolls_back_and_holds(
    repo: GitRepo,
    tmp_path: Path,
    pg_url: str,
    argo: FakeArgoServer,
    cluster: Cluster,
    prometheus: PrometheusServer,
) -> None:
    kubeconfig = cluster.kube.kubeconfig(tmp_path / "kubeconfig")
    settings = Settings(
        controller=ControllerSettings(repo=str(repo.path), state_dir=tmp_path / "state"),
        argo=ArgoSettings(artifacts_dir=argo.claim(CLAIM).parent, kubeconfig=kubeconfig),
        database_url=pg_url,
    )
    images = FakeImages()
    loop = Loop(build_controller(settings, images=images), repo, tmp_path / "cli", pg_url)
    store = loop.controller.store
    try:
        # v1, main's model: trained on Argo, staging, then production whole (nothing to canary against)
        loop.until(lambda: loop.at(1, "gate", "production"), "v1 at production's approval gate")
        assert loop.cli("approve", "iris", "1", "--as", "carol").exit_code == 0
        loop.until(lambda: loop.finished(1), "v1 in production")
        assert loop.at(1, "succeeded", "production")
        assert serving_version(cluster, production(cluster)) == {"v1": 100}
        first = production(cluster)["status"]["components"]["predictor"]["latestReadyRevision"]

        # a param change, proposed on a branch: trained on Argo and reported
        repo.branch("tune-c")
        repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
        head = repo.commit("Lower C")
        loop.until(lambda: "status: success" in loop.review("tune-c"), "tune-c's report")
        report = loop.review("tune-c")
        assert "| `C` | `1.0` | `0.5` |" in report and "production (v1)" in report and head[:10] in report
        [proposed] = [r for r in store.list_runs(model="iris", ref="tune-c")]
        workflows = [
            w
            for (_, w), doc in argo.workflows.items()
            if doc["metadata"]["labels"]["flywheel.dev/run"] == str(proposed.id)
        ]
        [workflow] = workflows  # trained on Argo, in one Workflow

        # merged: v2, whose lineage names the image it was trained in
        merge(repo, "tune-c")
        loop.until(lambda: len(store.list_versions("iris")) >= 2, "v2 to be registered")
        v2 = next(v for v in store.list_versions("iris") if v.number == 2)
        [built] = images.builds  # one environment, one image, built once
        assert v2.params["C"] == 0.5 and v2.image == f"{built}@{images.digest(built)}"
        steps = argo.workflows[("ml-pipelines", workflow)]["spec"]["templates"][1:]
        assert {t["container"]["image"] for t in steps} == {v2.image}  # the image it was trained in
        assert v2.image == store.get_run(v2.run_id).image

        # staging on KServe, then production's canary steps under traffic, analysed from Prometheus
        with Traffic(cluster) as traffic:
            loop.until(lambda: loop.at(2, "gate", "production"), "v2 at production's approval gate")
            # alice is no business owner: the engine's check, which every channel's approval goes through
            assert loop.controller.commands is not None
            refused = loop.controller.commands.decide(
                Actor("cli", "alice"), decision="approve", model="iris", version=2
            )
            assert not refused.ok and refused.refusal == "not_in_groups", refused
            assert loop.at(2, "gate", "production")
            approved = loop.cli("approve", "iris", "2", "--as", "carol")
            assert approved.exit_code == 0, approved.output
            loop.until(lambda: loop.finished(2), "v2 in production")
        rollout = loop.rollout(2)
        assert rollout is not None
        assert rollout.state == "succeeded", load_state(rollout)
        assert {20, 50} <= {percent for percent, _, _ in traffic.seen}  # each step's weight reached KServe
        assert {status for _, status, _ in traffic.seen} == {200}  # v1 and v2 answer every input
        rounds = analysis_rounds(loop, 2)
        assert "failed" not in {r["outcome"] for r in rounds}, rounds
        passed = [figures(r) for r in rounds if r["outcome"] == "passed"]
        assert len(passed) >= 2, rounds  # a passed round ends each step
        assert all(f["success-rate"] == 1.0 and f["enough-traffic"] >= 5 for f in passed), passed
        document = production(cluster)
        predictor = document["status"]["components"]["predictor"]
        assert "canaryTrafficPercent" not in document["spec"]["predictor"]
        assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [
            (predictor["latestReadyRevision"], 100)
        ]
        assert serving_version(cluster, document) == {"v2": 100}
        second = predictor["latestReadyRevision"]
        assert (predictor["previousRolledoutRevision"], predictor["latestRolledoutRevision"]) == (
            first,
            second,
        )
        assert {revision for _, _, revision in traffic.seen} == {first, second}  # both served the canary
        assert answered_by(cluster, 5) == {second}
        assert store.served_at(environment="production", model="iris", at=loop.controller.clock.now()) == [
            (2, 100)
        ]

        # v3 fails on part of its inputs: it rolls back on its own from Prometheus' success rate
        repo.branch("log-features")
        repo.edit("specs/iris/train.py", FIT, LOG_FEATURES)
        repo.edit(
            "specs/iris/train.py",
            "LogisticRegression(C={model.C})",
            "LogisticRegression(C={model[-1].C}) on logs",
        )
        repo.commit("Fit on the features' logarithms")
        merge(repo, "log-features")
        with Traffic(cluster) as traffic:
            loop.until(lambda: loop.finished(3), "v3's rollout to end")
        rollout = loop.rollout(3)
        assert rollout is not None
        assert rollout.state == "rolled_back", load_state(rollout)
        outcome = load_state(rollout).outcome
        assert outcome is not None and "success-rate" in outcome.reason
        failed = [figures(r) for r in analysis_rounds(loop, 3) if r["outcome"] == "failed"]
        assert len(failed) == 2  # failureLimit
        assert all(0 < f["success-rate"] < 0.99 for f in failed), failed  # part of its inputs
        assert any(status == 500 for percent, status, _ in traffic.seen if percent == 20)  # v3's failures
        document = production(cluster)
        assert "canaryTrafficPercent" not in document["spec"]["predictor"]
        assert serving_version(cluster, document) == {"v2": 100}
        assert document["metadata"]["annotations"]["flywheel.dev/version"] == "v2"
        restored = document["status"]["components"]["predictor"]["latestReadyRevision"]
        assert answered_by(cluster, 5) == {restored}  # v2's predictor again, on a revision of its own
        assert any(e.action == "rollout.rolled_back" and e.version == 3 for e in store.audit(model="iris"))

        # Prometheus stopped: v4's canary holds at its first step, and nothing is promoted
        prometheus.stop()
        repo.branch("tune-c-up")
        repo.edit("specs/iris/model.yaml", "C: 0.5", "C: 2.0")
        repo.commit("Raise C")
        merge(repo, "tune-c-up")
        with Traffic(cluster):
            loop.until(lambda: loop.at(4, "canary", "production"), "v4's canary in production")
            loop.until(lambda: loop.held(4, rounds=3), "three rounds of v4's first step, past its duration")
        rollout = loop.rollout(4)
        assert rollout is not None
        assert (rollout.state, rollout.step_index) == ("canary", 0), load_state(rollout)
        held = load_state(rollout)
        assert rollout.finished_at is None and held.last_round is not None
        assert held.last_round.verdict.outcome == "inconclusive", held.last_round
        document = production(cluster)
        assert document["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert serving_version(cluster, document) == {"v4": 20, "v2": 80}
        assert {r["outcome"] for r in analysis_rounds(loop, 4)} == {"inconclusive"}  # no figures, no verdict
        ended = {"rollout.promoted", "rollout.succeeded", "rollout.rolled_back"}
        assert not [e for e in store.audit(model="iris") if e.version == 4 and e.action in ended]
        # what KServe reported agreed with the store throughout (a first version is routed whole at once)
        assert not [e for e in store.audit(model="iris") if e.action == "serving.discrepancy"]
    finally:
        loop.controller.close()

"""A controller uses the backend an environment names, never another one in its place.

Pins down: a run whose environment names a pipeline runner the controller
does not have is recorded as an error naming the environment and the runner,
reported, logged once, counted by ``flywheel run --once`` (exit 1), and no
other runner runs it; a rollout to an environment whose serving backend the
controller does not have fails with that reason and is served by no other
backend; the controller serves each environment through the backend it
names. Real git, the real store, the fake runner and fake serving.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.app import ServingByName, build_controller, run_controller
from controller.backends.forge.fake import FakeForge
from controller.backends.git import Repository
from controller.backends.metrics.fake import FakeMetrics
from controller.backends.pipelines.fake import FakeRunner
from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.fake import FakeServing
from controller.backends.store import ModelVersion
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.proposals import ProposalReconciler
from controller.engine.rollout import RolloutEngine
from controller.engine.rollout_state import load_state
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, Settings
from controller.specs import load_tree
from controller.specs.types import Catalog, Environment, Model
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration
MISSING_RUNNER = (
    "environment 'staging' names pipeline runner 'local', which this controller does not have (it has: argo)"
)
MISSING_SERVING = (
    "environment 'staging' names serving backend 'kserve', "
    "which this controller does not have (it has: local)"
)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    repo.branch("tune")
    repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 3.0\n")
    repo.git("commit", "-qam", "tune")
    return repo


def test_a_run_never_falls_back_to_another_runner(
    repo: GitRepo, store: SqlStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = FakeRunner()
    forge = FakeForge()
    reconciler = ProposalReconciler(
        repository=Repository.open(str(repo.path), mirror_root=tmp_path / "mirrors"),
        store=store,
        forge=forge,
        runners={"argo": other},  # the environments name "local"
        work_dir=tmp_path / "work",
        clock=SYSTEM_CLOCK,
    )
    caplog.set_level(logging.INFO, logger="flywheel.proposals")
    try:
        for _ in range(3):
            reconciler.reconcile()
            reconciler.collect()
    finally:
        reconciler.shutdown()
    assert other.requests == []
    (run,) = store.list_runs(ref="tune")
    assert (run.status, run.error) == ("error", MISSING_RUNNER)
    assert [(f.ref, f.state, f.description) for f in reconciler.finished] == [
        ("tune", "error", MISSING_RUNNER)
    ]
    assert [(t.proposal, state, why) for t, state, why in forge.statuses][-1] == (
        "tune",
        "error",
        MISSING_RUNNER,
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"iris on tune: error — {MISSING_RUNNER}"]


def test_run_once_exits_non_zero_when_the_runner_is_missing(
    repo: GitRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = ControllerSettings(repo=str(repo.path), state_dir=tmp_path / "state", promote=False)
    settings = Settings(controller=options)
    controller = build_controller(settings, serving=FakeServing())
    controller.proposals.runners = {"argo": FakeRunner()}
    caplog.set_level(logging.INFO)
    assert run_controller(settings, once=True, controller=controller) == 1
    assert f"iris on tune: error — {MISSING_RUNNER}" in caplog.messages


def _served(tmp_path: Path) -> Callable[[ModelVersion, Model], ServedVersion]:
    def served(version: ModelVersion, model: Model) -> ServedVersion:
        return ServedVersion(
            model=model.name, version=f"v{version.number}", artifact_uri=str(tmp_path), serving=model.serving
        )

    return served


def _with_backend(catalog: Catalog, environment: str, backend: str) -> Catalog:
    changed = dataclasses.replace(catalog.environments[environment], serving_backend=backend)
    return dataclasses.replace(catalog, environments={**catalog.environments, environment: changed})


def test_a_rollout_to_an_environment_whose_backend_is_missing_fails_with_that_reason(
    store: SqlStore, tmp_path: Path
) -> None:
    local = FakeServing()
    catalog = _with_backend(load_tree(Path(__file__).resolve().parents[1]), "staging", "kserve")
    engine = RolloutEngine(
        rollouts=store,
        approvals=store,
        registry=store,
        audit=store,
        outbox=store,
        transactions=store,
        serving=ServingByName({"local": local}),
        metrics=lambda env: FakeMetrics(),
        catalog=lambda: catalog,
        served_version=_served(tmp_path),
        clock=SYSTEM_CLOCK,
    )
    run = store.create_run(model="iris", ref="main", commit="1" * 40, cache_key="k1", status="succeeded")
    version = store.register_version(
        model="iris",
        run_id=run.id,
        commit=run.commit,
        artifact_digest="sha256:1",
        artifact_uri=str(tmp_path),
        environment_hash="env",
        metrics={"accuracy": 0.9},
    )
    engine.start(version, catalog.models["iris"], author="alice")
    engine.run_until_settled()
    (rollout,) = store.rollouts_for("iris")
    assert rollout.state == "failed" and not rollout.active
    outcome = load_state(rollout).outcome
    assert outcome is not None and outcome.reason == f"deploy to staging failed: {MISSING_SERVING}"
    assert local.count("deploy") == 0 and local.count("set_weights") == 0


def test_serving_by_name_hands_each_environment_to_its_own_backend(tmp_path: Path) -> None:
    local = FakeServing()
    serving = ServingByName({"local": local})
    catalog = load_tree(Path(__file__).resolve().parents[1])
    production: Environment = catalog.environments["production"]
    staging = _with_backend(catalog, "staging", "kserve").environments["staging"]
    assert serving.endpoint(environment=production, model="iris") == local.endpoint(
        environment=production, model="iris"
    )
    version = ServedVersion(
        model="iris", version="v1", artifact_uri=str(tmp_path), serving=catalog.models["iris"].serving
    )
    for call in (
        lambda: serving.deploy(environment=staging, version=version),
        lambda: serving.smoke_test(environment=staging, model="iris", version="v1", inputs=[]),
        lambda: serving.set_weights(environment=staging, model="iris", weights={"v1": 100}),
        lambda: serving.endpoint(environment=staging, model="iris"),
        lambda: serving.router_metrics_url(staging),
    ):
        with pytest.raises(ServingError) as raised:
            call()
        assert str(raised.value) == MISSING_SERVING
    # nothing was ever served there: nothing to find, route away or retire
    assert serving.deployed(environment=staging, model="iris") == ()
    serving.set_weights(environment=staging, model="iris", weights={})
    serving.retire(environment=staging, model="iris", version="v1")
    assert local.calls == []


def test_the_controller_serves_each_environment_through_the_backend_it_names(
    repo: GitRepo, tmp_path: Path
) -> None:
    local = FakeServing()
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo.path), state_dir=tmp_path / "s")), serving=local
    )
    try:
        catalog = controller.main_catalog()
        staging = catalog.environments["staging"]
        assert controller.serving.endpoint(environment=staging, model="iris") == local.endpoint(
            environment=staging, model="iris"
        )
        elsewhere = dataclasses.replace(staging, serving_backend="kserve")
        with pytest.raises(ServingError, match="names serving backend 'kserve'"):
            controller.serving.endpoint(environment=elsewhere, model="iris")
    finally:
        controller.close()

"""An open proposal's comparison follows production: when the version in production changes, the
proposal's finished run is judged again against the new one and its report and status are refreshed,
without training anything again. Uses real git, the fake runner and the fake forge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.backends.forge.fake import FakeForge
from controller.backends.git import Repository
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.engine.proposals import ProposalReconciler
from controller.scaffold import scaffold
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration


@dataclass
class Parts:
    reconciler: ProposalReconciler
    store: SqlStore
    forge: FakeForge
    runner: FakeRunner
    clock: FakeClock


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    repo.git("checkout", "-qb", "tune")
    repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 3.0\n")
    repo.git("commit", "-qam", "tune")
    clock = FakeClock()
    store = open_store(tmp_path / "state", clock=clock)
    metrics = {"accuracy": 0.93, "f1_macro": 0.9, "log_loss": 0.3}
    runner = FakeRunner({"evaluate": ScriptedStep(metrics=metrics)})
    forge = FakeForge(clock=clock)
    reconciler = ProposalReconciler(
        repository=Repository.open(str(repo.path), mirror_root=tmp_path / "mirrors"),
        store=store,
        forge=forge,
        runners={"local": runner},
        work_dir=tmp_path / "work",
        clock=clock,
    )
    yield Parts(reconciler, store, forge, runner, clock)
    reconciler.shutdown()
    store.close()


def _put_in_production(parts: Parts, number: int, accuracy: float) -> None:
    store = parts.store
    run = store.create_run(model="iris", ref="main", commit=f"{number}" * 40, cache_key=f"m{number}")
    version = store.register_version(
        model="iris",
        run_id=run.id,
        commit=run.commit,
        artifact_digest=f"sha256:{number}",
        artifact_uri="/x",
        environment_hash="e",
        metrics={"accuracy": accuracy, "f1_macro": 0.9, "log_loss": 0.3},
    )
    parts.clock.advance(60)
    store.record_traffic(environment="production", model="iris", weights={version.number: 100})


def _pass(parts: Parts) -> None:
    parts.reconciler.reconcile()
    parts.reconciler.collect()


def test_a_new_production_version_refreshes_the_comparison_without_training(parts: Parts) -> None:
    _put_in_production(parts, 1, accuracy=0.92)
    _pass(parts)
    (run,) = parts.store.list_runs(ref="tune")
    assert run.baseline_version == 1 and len(parts.runner.requests) == 1
    review = parts.forge.reviews[("tune", "iris")]
    assert review.state == "success" and "**v1**" in review.body

    _pass(parts)  # nothing changed: nothing judged again
    assert [e.action for e in parts.store.audit()].count("run.rejudged") == 0

    _put_in_production(parts, 2, accuracy=0.97)  # better than the proposal by more than 0.02
    _pass(parts)
    (again,) = parts.store.list_runs(ref="tune")
    assert again.id == run.id and again.baseline_version == 2
    assert len(parts.runner.requests) == 1  # nothing trained again
    review = parts.forge.reviews[("tune", "iris")]
    assert review.state == "failure" and "regression" in review.description
    assert "**v2**" in review.body and "it was v1" in review.body
    assert [s for _t, s, _d in parts.forge.statuses][-1] == "failure"
    rejudged = [e for e in parts.store.audit() if e.action == "run.rejudged"]
    assert [(e.detail["compared_before"], e.detail["compared_with"]) for e in rejudged] == [(1, 2)]

    _pass(parts)
    assert len([e for e in parts.store.audit() if e.action == "run.rejudged"]) == 1  # once

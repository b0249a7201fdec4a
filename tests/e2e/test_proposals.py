"""End to end on a repository made with `flywheel init`: proposals are trained and reported.

Pins down, through the real CLI, git, the local runner and isolated
virtualenvs: a param change is trained and compared with production; a later
commit that leaves the model's inputs alone is a cache hit that runs nothing;
a failing gate gives a failure status naming it; a crashing step gives an
error status with its log tail; a bad spec is reported with its location
while the other models on the branch still train; a newer push cancels the
older run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.forge.fake import FakeForge
from controller.backends.git import Repository
from controller.backends.pipelines.local import LocalRunner
from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.engine.proposals import ProposalReconciler
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def venv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Virtualenvs shared by this module's runs (FLYWHEEL_TEST_VENV_DIR keeps them across sessions)."""
    shared = os.environ.get("FLYWHEEL_TEST_VENV_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("venvs")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    return GitRepo(tmp_path / "ml")


def _seed_production(state: Path, *, accuracy: float) -> None:
    """Put a version of iris in production, as a promotion would have."""
    store = open_store(state, clock=SYSTEM_CLOCK)
    run = store.create_run(model="iris", ref="main", commit="0" * 40, cache_key="seed", status="succeeded")
    artifact = state / "seed-artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    version = store.register_version(
        model="iris",
        run_id=run.id,
        commit="0" * 40,
        artifact_digest="sha256:seed",
        artifact_uri=str(artifact),
        environment_hash="seed",
        metrics={"accuracy": accuracy, "f1_macro": accuracy, "log_loss": 0.3},
        params={"C": 1.0},
    )
    store.record_traffic(environment="production", model="iris", weights={version.number: 100})
    store.close()


def _run_once(repo: GitRepo, state: Path, venvs: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["run", "--repo", str(repo.path), "--once", "--state-dir", str(state), "--venv-dir", str(venvs)],
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _review(state: Path, branch: str, *extra: str) -> str:
    result = CliRunner().invoke(main, ["review", "show", branch, "--state-dir", str(state), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_param_change_is_trained_compared_with_production_then_cached(
    repo: GitRepo, tmp_path: Path, venv_dir: Path
) -> None:
    state = tmp_path / "state"
    _seed_production(state, accuracy=0.90)
    repo.branch("tune-c")
    repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    first = repo.commit("Lower C")

    code, output = _run_once(repo, state, venv_dir)
    assert code == 0, output
    report = _review(state, "tune-c")
    assert "status: success" in report
    assert "production (v1)" in report
    assert "| **accuracy** |" in report and "| 0.9 |" in report  # production's value is shown
    assert "| `C` | `1.0` | `0.5` |" in report
    assert "| ✓ | `accuracy` | ≥ 0.85 |" in report
    assert "| ✓ | `accuracy` | regression ≤ 0.02 |" in report
    assert first[:10] in report

    store = open_store(state, clock=SYSTEM_CLOCK)
    (trained,) = store.list_runs(model="iris", ref="tune-c")
    assert trained.status == "succeeded" and trained.reused_from is None
    assert trained.artifact_digest and Path(trained.artifact_path or "").joinpath("model.joblib").is_file()
    store.close()
    runs_before = sorted(p.name for p in (state / "runs").iterdir())

    # A commit that does not touch the model's inputs: a cache hit that runs nothing.
    repo.write("NOTES.md", "why we lowered C\n")
    second = repo.commit("Notes")
    started = time.monotonic()
    code, output = _run_once(repo, state, venv_dir)
    took = time.monotonic() - started
    assert code == 0, output
    report = _review(state, "tune-c")
    assert second[:10] in report and "Cache hit" in report
    assert sorted(p.name for p in (state / "runs").iterdir()) == runs_before  # nothing ran
    store = open_store(state, clock=SYSTEM_CLOCK)
    latest = store.latest_run(model="iris", ref="tune-c")
    assert latest is not None and latest.commit == second and latest.reused_from == trained.id
    store.close()
    assert took < 10, f"a cache hit took {took:.1f}s"


def test_failed_gate_gives_a_failure_status_naming_the_gate(
    repo: GitRepo, tmp_path: Path, venv_dir: Path
) -> None:
    state = tmp_path / "state"
    repo.branch("strict")
    repo.edit("specs/iris/model.yaml", "min: 0.85", "min: 0.999")
    repo.commit("Demand near-perfect accuracy")
    code, _ = _run_once(repo, state, venv_dir)
    assert code == 1
    status = _review(state, "strict", "--status-only")
    assert status.startswith("iris\tfailure\t")
    assert "gate failed: accuracy = " in status and "needs ≥ 0.999" in status
    report = _review(state, "strict")
    assert "| ✗ | `accuracy` | ≥ 0.999 |" in report
    assert "| – | `accuracy` | regression ≤ 0.02 | no baseline |" in report  # no production yet


def test_crashing_step_gives_an_error_status_with_its_log_tail(
    repo: GitRepo, tmp_path: Path, venv_dir: Path
) -> None:
    state = tmp_path / "state"
    repo.branch("broken-code")
    crash = 'p = params()\nraise RuntimeError("feature store unreachable")'
    repo.edit("specs/iris/train.py", "p = params()", crash)
    repo.commit("Break training")
    code, _ = _run_once(repo, state, venv_dir)
    assert code == 1
    status = _review(state, "broken-code", "--status-only")
    assert status.startswith("iris\terror\t") and "step train failed" in status
    report = _review(state, "broken-code")
    assert "RuntimeError: feature store unreachable" in report
    assert "Last lines of `train`'s log" in report


def test_bad_spec_is_reported_located_and_other_models_still_train(
    repo: GitRepo, tmp_path: Path, venv_dir: Path
) -> None:
    state = tmp_path / "state"
    repo.branch("two-models")
    shutil.copytree(repo.path / "specs/iris", repo.path / "specs/iris-wide")
    repo.edit("specs/iris-wide/model.yaml", "name: iris", "name: iris-wide")
    repo.edit("specs/iris-wide/model.yaml", "C: 1.0", "C: 2.0")
    repo.edit("specs/iris/model.yaml", "max_iter: 200", "max_iter: high")
    repo.edit("specs/iris/model.yaml", "min: 0.85", "min: lots")
    repo.commit("A new model, and a typo in the old one")
    code, output = _run_once(repo, state, venv_dir)
    assert code == 1, output
    statuses = _review(state, "two-models", "--status-only").splitlines()
    by_model = {line.split("\t")[0]: line.split("\t")[1] for line in statuses}
    assert by_model == {"iris": "error", "iris-wide": "success"}
    report = _review(state, "two-models", "--model", "iris")
    assert "specs/iris/model.yaml:" in report
    assert "spec.validation.gates[0].min" in report


@pytest.fixture
def reconciler_parts(
    repo: GitRepo, tmp_path: Path
) -> Iterator[tuple[ProposalReconciler, SqlStore, FakeForge]]:
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    forge = FakeForge()
    reconciler = ProposalReconciler(
        repository=Repository.open(str(repo.path), mirror_root=tmp_path / "mirrors"),
        store=store,
        forge=forge,
        runners={"local": LocalRunner(kill_grace_seconds=1.0)},  # the test's own environment: fast
        work_dir=tmp_path / "state",
        clock=SYSTEM_CLOCK,
    )
    yield reconciler, store, forge
    reconciler.shutdown()
    store.close()


def test_newer_push_cancels_the_older_run(
    repo: GitRepo, reconciler_parts: tuple[ProposalReconciler, SqlStore, FakeForge]
) -> None:
    reconciler, store, forge = reconciler_parts
    repo.branch("slow")
    # slow training; an Event's wait rather than time.sleep, which libfaketime breaks (see tests/faketime)
    slow = "import threading\nthreading.Event().wait(60)\np = params()"
    repo.edit("specs/iris/train.py", "p = params()", slow)
    old = repo.commit("Slow training")
    assert len(reconciler.reconcile().started) == 1
    deadline = time.monotonic() + 20
    while not any(step for _, _, step, _ in reconciler.progress()) and time.monotonic() < deadline:
        time.sleep(0.05)

    repo.edit("specs/iris/train.py", "wait(60)", "wait(0)")
    new = repo.commit("Fast again")
    cancelled_at = time.monotonic()
    summary = reconciler.reconcile()
    assert len(summary.cancelled) == 1 and len(summary.started) == 1
    old_run = store.get_run(summary.cancelled[0])
    assert old_run.commit == old and old_run.status == "cancelled" and "superseded" in (old_run.error or "")

    while reconciler.busy and time.monotonic() - cancelled_at < 60:
        reconciler.collect()
        time.sleep(0.05)
    latest = store.latest_run(model="iris", ref="slow")
    assert latest is not None and latest.commit == new and latest.status == "succeeded"
    assert forge.reviews[("slow", "iris")].commit == new
    assert any(t.commit == old and "cancelled" in d for t, _s, d in forge.statuses)

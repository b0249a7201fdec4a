"""`flywheel cache ls` lists reusable results by key; `prune --older-than` removes old ones
(and old virtualenvs) but keeps results a model version was made from, and the runs' history."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK

pytestmark = pytest.mark.unit


def _result(state: Path, *, model: str, key: str, age_days: float) -> int:
    store = open_store(state, clock=SYSTEM_CLOCK)
    run = store.create_run(model=model, ref="b", commit="c" * 40, cache_key=key, environment_hash="e" * 64)
    artifact = state / "runs" / str(run.id) / "model"
    artifact.mkdir(parents=True)
    (artifact / "model.joblib").write_bytes(b"x" * 2048)
    store.update_run(
        run.id,
        status="succeeded",
        artifact_path=str(artifact),
        finished_at=datetime.now(UTC) - timedelta(days=age_days),
    )
    store.close()
    return run.id


def test_ls_lists_results_and_prune_removes_only_old_unreleased_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = _result(state, model="iris", key="a" * 64, age_days=10)
    released = _result(state, model="iris", key="b" * 64, age_days=10)
    fresh = _result(state, model="wdbc", key="c" * 64, age_days=0)
    store = open_store(state, clock=SYSTEM_CLOCK)
    store.register_version(
        model="iris",
        run_id=released,
        commit="c" * 40,
        artifact_digest="sha256:1",
        artifact_uri=str(state / "runs" / str(released) / "model"),
        environment_hash="e" * 64,
    )
    store.close()
    stale_venv = state / "venvs" / "env-ffffffffffffffffffffffff"
    stale_venv.mkdir(parents=True)
    (stale_venv / "marker").write_text("x")
    week_ago = (datetime.now() - timedelta(days=8)).timestamp()
    os.utime(stale_venv, (week_ago, week_ago))

    runner = CliRunner()
    listing = runner.invoke(main, ["cache", "ls", "--state-dir", str(state)])
    assert listing.exit_code == 0, listing.output
    assert "a" * 16 in listing.output and "c" * 16 in listing.output and "wdbc" in listing.output

    prune = ["cache", "prune", "--older-than", "7d", "--state-dir", str(state)]
    dry = runner.invoke(main, [*prune, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 2 entries" in dry.output
    assert (state / "runs" / str(old)).is_dir()

    pruned = runner.invoke(main, prune)
    assert pruned.exit_code == 0, pruned.output
    assert f"result run {old} (iris)" in pruned.output and "virtualenv env-fff" in pruned.output
    assert not (state / "runs" / str(old)).exists() and not stale_venv.exists()
    assert (state / "runs" / str(released)).is_dir() and (state / "runs" / str(fresh)).is_dir()

    after = runner.invoke(main, ["cache", "ls", "--state-dir", str(state)])
    assert "a" * 16 not in after.output and "b" * 16 in after.output
    store = open_store(state, clock=SYSTEM_CLOCK)
    assert store.get_run(old).status == "succeeded"  # history stays
    store.close()


def test_prune_rejects_a_bad_duration(tmp_path: Path) -> None:
    args = ["cache", "prune", "--older-than", "soon", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "not a duration" in result.output

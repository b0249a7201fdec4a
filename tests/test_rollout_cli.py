"""The registry and rollout commands through the CLI: models, versions, history, audit, approve and friends.

Each command reads the store in ``--state-dir`` and, for decisions, main's
policy in ``--repo``; refusals exit non-zero with the reason and are audited.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Watched, record_watched
from controller.scaffold import scaffold

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    repo, state = tmp_path / "ml", tmp_path / "state"
    scaffold(repo)
    store = open_store(state, clock=SYSTEM_CLOCK)
    for n in (1, 2):
        run = store.create_run(
            model="iris", ref="main", commit=f"{n}" * 40, cache_key=f"k{n}", status="succeeded"
        )
        store.register_version(
            model="iris",
            run_id=run.id,
            commit=run.commit,
            artifact_digest=f"sha256:{n}{n}",
            artifact_uri="/x",
            environment_hash="e",
            metrics={"accuracy": 0.9 + n / 100},
        )
    past = datetime.now(UTC) - timedelta(hours=1)
    store.record_traffic(environment="production", model="iris", weights={1: 100}, at=past)
    store.create_rollout(
        model="iris", version=2, stages=["staging", "production"], state="gate", detail={"author": "alice"}
    )
    record_watched(store, Watched(repository=str(repo.resolve()), release_branch="main"))  # as `run` does
    store.close()
    return repo, state


def _cli(*args: str, login: str | None = None) -> tuple[int, str]:
    """Run ``flywheel ARGS`` as the operating-system user ``login`` (default: the one ``--as`` names)."""
    if login is None and "--as" in args:
        login = args[args.index("--as") + 1]
    with mock.patch("controller.cli.rollouts.os_login", return_value=login or "nobody-here"):
        result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_models_versions_history(setup: tuple[Path, Path]) -> None:
    repo, state = setup
    code, out = _cli("models", "--state-dir", str(state), "--repo", str(repo))
    assert code == 0 and "iris" in out and "v2 in progress in staging (gate)" in out
    assert "production=v1:100%" in out
    code, out = _cli("versions", "iris", "--state-dir", str(state), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["artifact_digest"] == "sha256:22"
    before = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    code, out = _cli("history", "iris", "--env", "production", "--at", before, "--state-dir", str(state))
    assert code == 0 and "production: nothing" in out
    code, out = _cli("history", "iris", "--env", "production", "--state-dir", str(state))
    assert code == 0 and "v1 → 100%" in out


def test_approve_is_checked_against_mains_policy_and_audited(setup: tuple[Path, Path]) -> None:
    repo, state = setup
    where = ("--repo", str(repo), "--state-dir", str(state))
    code, out = _cli("approve", "iris", "2", "--env", "production", "--as", "alice", *where)
    assert code == 1 and "refused" in out and "business-owners" in out
    code, out = _cli("approve", "iris", "2", "--as", "carol", "-m", "looks good", *where)
    assert code == 0 and "carol approved iris v2 for production" in out
    code, out = _cli("pause", "iris", "--as", "alice", "-m", "hold on", *where)
    assert code == 0 and "paused" in out, out
    code, out = _cli("abort", "iris", "--as", "carol", *where)
    assert code == 1 and "may not abort" in out
    code, out = _cli("audit", "iris", "--state-dir", str(state))
    assert code == 0
    lines = out.splitlines()
    assert any("alice" in line and "command.refused" in line for line in lines)
    assert any("carol" in line and "approval.approve" in line and "looks good" in line for line in lines)
    assert any("alice" in line and "command.pause" in line and "hold on" in line for line in lines)


def test_requests_under_another_branch_or_repository_are_refused_and_audited(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, state = setup
    git = ("git", "-C", str(repo), "-c", "user.name=alice", "-c", "user.email=alice@example.com")
    subprocess.run([*git, "checkout", "-qb", "evil-policy"], check=True)
    policy = repo / "policies" / "default.yaml"
    policy.write_text(policy.read_text().replace("members: [carol]", "members: [alice, carol]"))
    subprocess.run([*git, "commit", "-qam", "alice owns the business now"], check=True)
    elsewhere = tmp_path / "elsewhere"
    scaffold(elsewhere)

    on_state = ("--state-dir", str(state))
    code, out = _cli("approve", "iris", "2", "--as", "alice", "--branch", "evil-policy", *on_state)
    assert code == 1 and "refused" in out and "never evil-policy's" in out
    code, out = _cli("approve", "iris", "2", "--as", "alice", "--repo", str(elsewhere), *on_state)
    assert code == 1 and "not the repository the controller watches" in out
    code, out = _cli("pause", "iris", "--as", "alice", "--branch", "evil-policy", *on_state)
    assert code == 1 and "never evil-policy's" in out

    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        assert store.approvals_for(model="iris", version=2, environment="production") == []
        refusals = [e.detail["refusal"] for e in store.audit(model="iris") if e.action == "command.refused"]
        assert refusals == ["not_release_branch", "not_watched", "not_release_branch"]
        assert store.rollouts_for("iris")[0].paused is False
    finally:
        store.close()
    # without --repo or --branch, the watched repository's main decides: alice is still no business owner
    code, out = _cli("approve", "iris", "2", "--as", "alice", *on_state)
    assert code == 1 and "business-owners" in out


def test_as_must_name_who_the_operating_system_user_is_in_mains_policy(setup: tuple[Path, Path]) -> None:
    repo, state = setup
    where = ("--repo", str(repo), "--state-dir", str(state))
    code, out = _cli("approve", "iris", "2", "--as", "carol", *where, login="alice")
    assert code == 1
    assert "--as carol is not you: your operating-system user alice is alice in main's policy." in out
    code, out = _cli("approve", "iris", "2", "--as", "carol", *where, login="cmiller")
    assert code == 1 and "cmiller is nobody in main's policy (add `login: cmiller`" in out
    with mock.patch.dict("os.environ", {"FLYWHEEL_USER": "carol"}):
        code, out = _cli("approve", "iris", "2", *where, login="alice")
    assert code == 1 and "--as carol is not you" in out

    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        assert store.approvals_for(model="iris", version=2, environment="production") == []
        refused = [e for e in store.audit(model="iris") if e.action == "command.refused"]
        assert [(e.detail["refusal"], e.detail["as"]) for e in refused] == [("not_you", "carol")] * 3
    finally:
        store.close()


def test_the_policys_identities_map_an_operating_system_login_to_its_person(setup: tuple[Path, Path]) -> None:
    repo, state = setup
    policy = repo / "policies" / "default.yaml"
    policy.write_text(
        policy.read_text().replace("    - user: carol\n", "    - user: carol\n      login: cmiller\n")
    )
    git = ("git", "-C", str(repo), "-c", "user.name=ops", "-c", "user.email=ops@example.com")
    subprocess.run([*git, "commit", "-qam", "carol signs in as cmiller"], check=True)
    where = ("--repo", str(repo), "--state-dir", str(state))
    code, out = _cli("approve", "iris", "2", *where, login="cmiller")
    assert code == 0 and "carol approved iris v2 for production" in out
    code, out = _cli("reject", "iris", "2", "--as", "carol", *where, login="cmiller")
    assert code == 0 and "carol rejected iris v2 for production" in out

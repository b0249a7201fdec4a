"""What ``flywheel models``, ``flywheel status`` and ``flywheel review ls`` say a rollout is doing, and why.

Rollouts are driven through the real rollout engine on a real store (fake
serving, scripted metrics), then read by :mod:`controller.engine.status` and
the commands: a canary without data reads *holding* with the analysis' reason
and each check's value against its threshold; an approval gate reads
*holding* with the rule and the groups that may approve; a paused rollout
names who paused it; a rolled-back one reads *rolled back* (never
*succeeded*) with why; a main-branch run that failed its gates is shown; and
every listing prints JSON with ``--json``, in the shapes pinned down here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.metrics import Measurement
from controller.backends.metrics.fake import FakeMetrics
from controller.backends.serving.fake import FakeServing
from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK, FakeClock
from controller.engine.commands import Actor
from controller.engine.status import model_status
from controller.scaffold import scaffold
from controller.specs import load_tree
from tests.fixtures.rollout_world import RolloutWorld

pytestmark = pytest.mark.integration


@dataclass
class World(RolloutWorld):
    """The rollout world of the dashboard's tests, and the CLI run over its state and repository."""

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--state-dir", str(self.state), "--repo", str(self.repo)])
        return result.exit_code, result.output


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.chdir(tmp_path)
    repo, state = tmp_path / "ml", tmp_path / "state"
    scaffold(repo)
    # An hour ago, so what the engine recorded is in the past of the commands' own clock.
    clock = FakeClock(SYSTEM_CLOCK.now() - timedelta(hours=1))
    store = open_store(state, clock=clock)
    yield World(repo, state, store, load_tree(repo), FakeServing(), FakeMetrics(), clock)
    store.close()


def _no_data(world: World) -> None:
    world.metrics.set("success-rate", "v2", Measurement.missing("no requests in the window", samples=0))
    world.metrics.set("latency-p99", "v2", Measurement.missing("no requests in the window", samples=0))
    world.metrics.set("enough-traffic", "v2", Measurement(value=0.0, samples=0))


def test_a_canary_without_data_holds_and_says_why_with_each_check_against_its_threshold(world: World) -> None:
    world.to_canary()
    _no_data(world)
    world.settle(seconds=11, ticks=4)

    status = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog)
    rollout = status.rollout
    assert rollout is not None and rollout.version == 2
    assert (rollout.condition, rollout.state, rollout.stage, rollout.weight) == (
        "holding",
        "canary",
        "production",
        20,
    )
    assert "inconclusive" in rollout.reason
    assert rollout.canary is not None and (rollout.canary.step, rollout.canary.steps) == (1, 2)
    assert rollout.canary.stable_version == 1
    last = rollout.last_round
    assert last is not None and last.outcome == "inconclusive" and last.decision == "hold"
    assert (last.failed_rounds, last.failure_limit) == (0, 2)
    checks = {c.check: c for c in last.checks}
    assert checks["enough-traffic"].value == 0.0 and checks["enough-traffic"].rule == "≥ 20"
    assert checks["success-rate"].value is None and checks["success-rate"].outcome == "inconclusive"
    assert [w.kind for w in rollout.waiting_for] == ["analysis"]  # its 30 s are over; data is missing
    assert [(s.version, s.weight) for s in status.serving[1].shares] == [(1, 80), (2, 20)]

    code, out = world.cli("models")
    assert code == 0, out
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("iris"))
    assert "v2 holding in production (canary 1/2 at 20%)" in row and "production=v1:80%+v2:20%" in row
    assert "inconclusive" in lines[lines.index(row) + 1] and lines[lines.index(row) + 1].startswith("  ↳")

    code, out = world.cli("status", "iris")
    assert code == 0, out
    assert "v2 holding" in out and "step 1 of 2 at 20%, v1 stable" in out
    assert "last analysis:  inconclusive" in out and "0 of 2 failed rounds" in out
    assert any(
        "enough-traffic" in line and "needs ≥ 20" in line and "inconclusive" in line
        for line in out.splitlines()
    )
    assert "waiting for:    analysis: an analysis round that passes" in out

    code, out = world.cli("status", "iris", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["model"] == "iris" and data["latest_version"] == 2
    assert data["rollout"]["condition"] == "holding" and data["rollout"]["active"] is True
    assert data["rollout"]["canary"]["step"] == 1 and data["rollout"]["canary"]["steps"] == 2
    check = next(c for c in data["rollout"]["last_round"]["checks"] if c["check"] == "enough-traffic")
    assert check == {
        "check": "enough-traffic",
        "rule": "≥ 20",
        "outcome": "inconclusive",
        "value": 0.0,
        "samples": 0,
        "message": check["message"],
    }
    assert data["rollout"]["waiting_for"][0]["kind"] == "analysis"
    assert data["serving"][1] == {
        "environment": "production",
        "shares": [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}],
    }


def test_a_passing_canary_step_is_in_progress_and_waits_out_its_duration(world: World) -> None:
    world.good("v2")
    world.to_canary()
    rollout = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog).rollout
    assert rollout is not None and (rollout.condition, rollout.state, rollout.reason) == (
        "in_progress",
        "canary",
        "",
    )
    assert rollout.last_round is not None and rollout.last_round.decision == "continue"
    canary = rollout.canary
    assert canary is not None and canary.started_at is not None and canary.ends_at is not None
    assert canary.ends_at - canary.started_at == timedelta(seconds=30)
    assert [(w.kind, w.until) for w in rollout.waiting_for] == [("time", canary.ends_at)]
    code, out = world.cli("models")
    assert code == 0 and "v2 in progress in production (canary 1/2 at 20%)" in out and "↳" not in out


def test_an_approval_gate_holds_and_names_the_rule_and_who_may_approve(world: World) -> None:
    world.to_canary()
    world.good("v2")
    world.settle(seconds=11, ticks=8)

    status = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog)
    rollout = status.rollout
    assert rollout is not None and (rollout.state, rollout.condition) == ("gate", "holding")
    approval = rollout.approval
    assert approval is not None
    assert (approval.rule, approval.groups, approval.required, approval.missing) == (
        "production-signoff",
        ("business-owners",),
        1,
        1,
    )
    assert rollout.reason == "waiting for 1 more approval from business-owners"
    assert [w.kind for w in rollout.waiting_for] == ["approval"]

    code, out = world.cli("models")
    assert code == 0 and "v2 holding in production (approval gate)" in out
    assert "↳ waiting for 1 more approval from business-owners" in out
    code, out = world.cli("status", "iris")
    assert "approval:       production-signoff in production: 1 from business-owners" in out
    data = json.loads(world.cli("models", "--json")[1])
    assert data[0]["rollout"]["approval"]["groups"] == ["business-owners"]
    assert data[0]["rollout"]["approval"]["missing"] == 1

    # Without main's specs, the gate still reads as waiting, and says who may approve is not known here.
    where = ["--state-dir", str(world.state)]
    result = CliRunner().invoke(main, ["status", "iris", "--repo", str(world.state), *where])
    assert result.exit_code == 1 and "Error: not a git repository" in result.output  # given, so it must work
    result = CliRunner().invoke(main, ["status", "iris", *where])  # "." by default: read when it can be
    assert result.exit_code == 0 and "v2 holding" in result.output
    assert "pass --repo to see who may approve" in result.output


def test_a_paused_rollout_names_who_paused_it_and_waits_for_a_resume(world: World) -> None:
    world.to_canary()
    assert world.commands().control(Actor("cli", "alice"), command="pause", model="iris", reason="lunch").ok
    world.settle(ticks=2)
    rollout = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog).rollout
    assert rollout is not None and rollout.condition == "paused"
    assert rollout.paused is not None and (rollout.paused.by, rollout.paused.reason) == ("alice", "lunch")
    assert rollout.reason == "paused by alice: lunch"
    assert [w.kind for w in rollout.waiting_for] == ["resume"]
    code, out = world.cli("models")
    assert "v2 paused in production (canary 1/2 at 20%)" in out and "↳ paused by alice: lunch" in out
    code, out = world.cli("status", "iris", "--json")
    assert code == 0 and json.loads(out)["rollout"]["paused"]["by"] == "alice"


def test_a_rolled_back_rollout_reads_rolled_back_with_why_not_succeeded(world: World) -> None:
    world.to_canary()
    world.good("v2")
    world.metrics.set("success-rate", "v2", Measurement(value=0.7, samples=100))
    world.settle(seconds=11, ticks=6)

    rollout = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog).rollout
    assert rollout is not None and rollout.condition == "rolled_back" and not rollout.active
    assert "success-rate = 0.7" in rollout.reason and rollout.weight is None
    code, out = world.cli("models")
    row = next(line for line in out.splitlines() if line.startswith("iris"))
    assert "v2 rolled back" in row and "succeeded" not in row and "production=v1:100%" in row
    assert "↳ rolling back after 2 failed rounds" in out
    code, out = world.cli("status", "iris")
    assert code == 0 and "rolled back" in out and "why:" in out and "success-rate = 0.7" in out
    data = json.loads(world.cli("models", "--json")[1])
    assert data[0]["rollout"]["condition"] == "rolled_back" and data[0]["rollout"]["active"] is False


def test_a_main_branch_run_that_failed_its_gates_is_shown(world: World) -> None:
    world.to_canary()
    failed = world.store.create_run(
        model="iris", ref="main", commit="f" * 40, cache_key="kf", trigger="merge", status="running"
    )
    gate = {
        "metric": "accuracy",
        "rule": "≥ 0.85",
        "outcome": "failed",
        "value": 0.5,
        "baseline": None,
        "message": "accuracy = 0.5, needs ≥ 0.85",
    }
    world.store.update_run(failed.id, status="succeeded", gates=[gate], finished_at=world.clock.now())

    status = model_status(world.store, "iris", now=world.clock.now(), catalog=world.catalog)
    assert status.release_run is not None and status.release_run.outcome == "gates_failed"
    assert status.release_run.needs_attention and status.release_run.version is None
    code, out = world.cli("models")
    assert f"↳ last main run #{failed.id} (ffffffffff) failed its gates: accuracy = 0.5, needs ≥ 0.85" in out
    code, out = world.cli("status", "iris")
    assert f"release run:    main run #{failed.id} (ffffffffff) failed its gates" in out
    data = json.loads(world.cli("status", "iris", "--json")[1])
    assert data["release_run"]["outcome"] == "gates_failed" and data["release_run"]["needs_attention"] is True
    assert data["release_run"]["failed_gates"][0]["metric"] == "accuracy"

    # A model whose only main-branch run failed its gates is listed too, with no version.
    world.store.create_run(
        model="wine", ref="main", commit="e" * 40, cache_key="kw", trigger="merge", status="error"
    )
    code, out = world.cli("models")
    assert any(line.startswith("wine") and " - " in line for line in out.splitlines())
    code, out = world.cli("status", "nope")
    assert code == 1 and "no model 'nope'" in out and "iris, wine" in out


def test_review_ls_lists_proposals_with_their_outcome_and_the_version_compared_with(world: World) -> None:
    world.to_canary()  # v1 serves production
    run = world.store.create_run(
        model="iris", ref="lower-c", commit="c" * 40, cache_key="kc", trigger="proposal", status="succeeded"
    )
    world.store.update_run(run.id, finished_at=world.clock.now(), baseline_version=1)  # as judged
    world.store.save_review(
        proposal="lower-c", model="iris", commit="c" * 40, body="# report", state="success", description="ok"
    )
    world.store.save_review(proposal="wip", model="iris", commit="d" * 40, body="# queued")

    code, out = world.cli("review", "ls")
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("lower-c"))
    assert "iris" in row and "cccccccccc" in row and "success" in row and " v1 " in row and "ok" in row
    wip = next(line for line in out.splitlines() if line.startswith("wip"))
    assert "pending" in wip and " - " in wip  # not judged yet: compared with nothing

    data = json.loads(world.cli("review", "ls", "--json")[1])
    assert {d["branch"]: d["compared_with"] for d in data} == {"lower-c": 1, "wip": None}
    item = next(d for d in data if d["branch"] == "lower-c")
    assert set(item) == {
        "branch",
        "model",
        "commit",
        "state",
        "description",
        "updated_at",
        "run",
        "compared_with",
    }
    assert item["run"] == run.id and item["state"] == "success"

    result = CliRunner().invoke(
        main, ["review", "show", "lower-c", "--json", "--state-dir", str(world.state)]
    )
    assert result.exit_code == 0, result.output
    (shown,) = json.loads(result.output)
    assert shown["body"] == "# report" and shown["compared_with"] == 1 and shown["model"] == "iris"


def test_history_and_versions_print_json(world: World) -> None:
    world.to_canary()
    where = ("--state-dir", str(world.state))
    result = CliRunner().invoke(main, ["history", "iris", "--env", "production", "--json", *where])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "iris" and data["at"] is None
    assert [(r["version"], r["weight"]) for r in data["environments"]["production"]] == [
        (1, 100),
        (1, 80),
        (2, 20),
    ]
    at = world.clock.now().isoformat()
    result = CliRunner().invoke(main, ["history", "iris", "--at", at, "--json", *where])
    data = json.loads(result.output)
    assert data["environments"] == {
        "staging": [{"version": 2, "weight": 100}],
        "production": [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}],
    }
    result = CliRunner().invoke(main, ["versions", "iris", "--json", *where])
    assert [v["version"] for v in json.loads(result.output)] == [1, 2]


def test_every_listing_has_one_json_flag() -> None:
    runner = CliRunner()
    for command in (
        ["models"],
        ["status"],
        ["versions"],
        ["history"],
        ["audit"],
        ["review", "ls"],
        ["review", "show"],
        ["cache", "ls"],
    ):
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "--json" in result.output, command

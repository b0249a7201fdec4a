"""Retrains on the embedded home: new data and schedule ticks become commits on flywheel/retrain/<model>.

The controller is built as ``flywheel run`` builds it (the local forge: a
branch is a proposal) on a scaffolded repository whose iris model reads a
local CSV file (``file://``), with a fake clock, runner and serving. Pins
down the issue's first "done when":

* the first look at the data only records its version (nothing retrains);
* a changed CSV file makes ``flywheel/retrain/iris`` appear with one commit
  that pins the new content digest in the spec, by Flywheel, at the clock's
  time; the branch is reconciled at once, its proposal trained and reported;
* a restarted controller neither commits again nor opens a second proposal;
* a schedule's ticks missed while the controller was down fire once, as the
  latest tick, written into the spec as an annotation on top of the open
  retrain (whose data pin stays);
* once the retrain is merged, the next new data starts the branch again from
  main; a retrain branch deleted unmerged comes back only for a new reason,
  and data back at the version main pins is skipped; unreadable data is
  audited once while it stays unreadable;
* every decision is in the audit log, and ``flywheel triggers`` shows each
  trigger's last firing, next firing and why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from controller.app import Controller, build_controller
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.cli import main
from controller.clock import FakeClock
from controller.engine.trigger_plan import RETRAIN_ANNOTATION, TICK_ANNOTATION, Version, data_reason
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, Settings
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration

BRANCH = "flywheel/retrain/iris"
SPEC = "specs/iris/model.yaml"
CHECK = 60.0  # seconds between reads of the data


@pytest.fixture
def work(tmp_path: Path) -> Iterator[GitRepo]:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    data = tmp_path / "fresh.csv"
    data.write_text("x,y\n1,0\n")
    repo.edit(
        SPEC,
        '      version: "1"\n',
        f'      version: "1"\n    - name: fresh\n      uri: {data.as_uri()}\n',
    )
    repo.write(SPEC, repo.read(SPEC) + '  triggers:\n    dataChange: true\n    schedule: "0 3 * * 1"\n')
    repo.commit("iris: retrain on new data and every Monday")
    yield repo


def build(tmp_path: Path, work: GitRepo, clock: FakeClock) -> Controller:
    controller = build_controller(
        Settings(
            controller=ControllerSettings(
                repo=str(work.path), state_dir=tmp_path / "state", promote=False, data_check_seconds=CHECK
            )
        ),
        serving=FakeServing(),
        clock=clock,
    )
    controller.proposals.runners = {
        "local": FakeRunner(
            {"evaluate": ScriptedStep(metrics={"accuracy": 0.97, "f1_macro": 0.96, "log_loss": 0.1})}
        )
    }
    return controller


def turn(controller: Controller, clock: FakeClock, seconds: float = CHECK) -> None:
    """Time passes; one tick; the branches it asked for are reconciled and their runs finish."""
    clock.advance(seconds)
    controller.tick()
    controller.reconcile_requested()
    while controller.proposals.busy:
        controller.proposals.collect()


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fresh(spec: dict[str, object]) -> dict[str, object]:
    data = spec["spec"]["data"]  # type: ignore[index]
    return next(d for d in data if d["name"] == "fresh")  # type: ignore[no-any-return]


def actions(controller: Controller) -> list[str]:
    return [e.action for e in controller.store.audit(model="iris") if e.action.startswith("trigger.")]


def test_new_data_commits_its_digest_on_the_retrain_branch_which_is_trained_and_survives_a_restart(
    tmp_path: Path, work: GitRepo
) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 12, 0, tzinfo=UTC))  # a Tuesday
    controller = build(tmp_path, work, clock)
    try:
        turn(controller, clock, 0)
        assert actions(controller) == ["trigger.armed", "trigger.armed"]  # the schedule, the data's version
        assert work.git("branch", "--list", BRANCH) == ""

        turn(controller, clock)  # the same data: nothing
        assert work.git("branch", "--list", BRANCH) == ""

        (tmp_path / "fresh.csv").write_text("x,y\n1,0\n2,1\n")
        turn(controller, clock)
        head = work.git("rev-parse", BRANCH)
        assert work.git("rev-list", "--count", f"main..{BRANCH}") == "1"
        assert work.git("log", "-1", "--format=%an <%ae> %at%n%s", BRANCH) == (
            f"Flywheel <flywheel@localhost> {int(clock.now().timestamp())}\nRetrain iris: new data (fresh)"
        )
        assert work.git("diff", "--name-only", "main", BRANCH) == SPEC
        spec = yaml.safe_load(work.git("show", f"{BRANCH}:{SPEC}"))
        assert fresh(spec)["digest"] == digest("x,y\n1,0\n2,1\n")
        assert spec["metadata"]["annotations"] == {RETRAIN_ANNOTATION: "new data: fresh"}

        runs = controller.store.list_runs()
        assert [(r.ref, r.commit, r.status) for r in runs] == [(BRANCH, head, "succeeded")]
        review = controller.store.reviews(proposal=BRANCH, model="iris")
        assert [(r.commit, r.state) for r in review] == [(head, "success")]
        fired = [e for e in controller.store.audit(model="iris") if e.action == "trigger.fired"]
        assert len(fired) == 1
        assert fired[0].detail["changed"] == {
            "fresh": {
                "from": {"pin": "digest", "value": digest("x,y\n1,0\n")},
                "to": {"pin": "digest", "value": digest("x,y\n1,0\n2,1\n")},
            }
        }
        assert (fired[0].detail["branch"], fired[0].detail["commit"]) == (BRANCH, head)
        assert fired[0].detail["proposal"] == f"branch {BRANCH}"
    finally:
        controller.close()

    controller = build(tmp_path, work, clock)  # a restart
    try:
        turn(controller, clock)
        turn(controller, clock)
        assert work.git("rev-parse", BRANCH) == head
        assert len(controller.store.list_runs()) == 1  # no second proposal, no second run
        assert actions(controller).count("trigger.fired") == 1
    finally:
        controller.close()


def test_missed_ticks_fire_once_on_restart_on_top_of_the_open_retrain(tmp_path: Path, work: GitRepo) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 12, 0, tzinfo=UTC))  # a Tuesday
    controller = build(tmp_path, work, clock)
    try:
        turn(controller, clock, 0)
        (tmp_path / "fresh.csv").write_text("x,y\n5,5\n")
        turn(controller, clock)
        first = work.git("rev-parse", BRANCH)
    finally:
        controller.close()

    clock.set(datetime(2026, 1, 28, 9, 0, tzinfo=UTC))  # down over three Mondays
    controller = build(tmp_path, work, clock)
    try:
        turn(controller, clock, 0)
        assert work.git("rev-list", "--count", f"main..{BRANCH}") == "2"
        assert work.git("rev-parse", f"{BRANCH}~1") == first
        spec = yaml.safe_load(work.git("show", f"{BRANCH}:{SPEC}"))
        assert spec["metadata"]["annotations"][TICK_ANNOTATION] == "2026-01-26T03:00:00+00:00"
        assert fresh(spec)["digest"] == digest("x,y\n5,5\n")  # the open retrain's pin stays
        turn(controller, clock, 3600)
        assert actions(controller).count("trigger.fired") == 2  # one tick, not three
    finally:
        controller.close()


def test_after_a_merge_or_a_deletion_only_a_new_reason_starts_the_branch_again(
    tmp_path: Path, work: GitRepo
) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    controller = build(tmp_path, work, clock)
    try:
        turn(controller, clock, 0)
        (tmp_path / "fresh.csv").write_text("x,y\n7,7\n")
        turn(controller, clock)
        work.git("merge", "-q", "--ff-only", BRANCH)  # merged: main pins the data now
        (tmp_path / "fresh.csv").write_text("x,y\n8,8\n")
        turn(controller, clock)
        assert work.git("rev-list", "--count", f"main..{BRANCH}") == "1"
        assert work.git("rev-parse", f"{BRANCH}~1") == work.git("rev-parse", "main")

        work.git("branch", "-q", "-D", BRANCH)  # closed unmerged
        turn(controller, clock)
        turn(controller, clock)
        assert work.git("branch", "--list", BRANCH) == ""  # left alone: no new reason
        (tmp_path / "fresh.csv").write_text("x,y\n9,9\n")
        turn(controller, clock)
        spec = yaml.safe_load(work.git("show", f"{BRANCH}:{SPEC}"))
        assert fresh(spec)["digest"] == digest("x,y\n9,9\n")
        assert actions(controller).count("trigger.fired") == 3

        work.git("branch", "-q", "-D", BRANCH)
        (tmp_path / "fresh.csv").write_text("x,y\n7,7\n")  # back to what main pins: nothing to propose
        turn(controller, clock)
        assert work.git("branch", "--list", BRANCH) == ""
        [skipped] = [e for e in controller.store.audit(model="iris") if e.action == "trigger.skipped"]
        assert skipped.detail["why"] == f"main already says this ({SPEC})"

        (tmp_path / "fresh.csv").unlink()  # unreadable: audited once while it lasts
        turn(controller, clock)
        turn(controller, clock)
        [failed] = [e for e in controller.store.audit(model="iris") if e.action == "trigger.failed"]
        assert failed.detail["why"].startswith("reading data: data input 'fresh': ")
        assert failed.detail["why"].endswith("fresh.csv does not exist")
    finally:
        controller.close()


def test_flywheel_triggers_shows_each_trigger_its_last_firing_and_why(tmp_path: Path, work: GitRepo) -> None:
    clock = FakeClock(datetime(2020, 1, 7, 12, 0, tzinfo=UTC))  # long ago: the command reads the real clock
    controller = build(tmp_path, work, clock)
    try:
        turn(controller, clock, 0)
        (tmp_path / "fresh.csv").write_text("x,y\n6,6\n")
        turn(controller, clock)
        fired_at = clock.now()
    finally:
        controller.close()
    cli = CliRunner()
    options = ["--repo", str(work.path), "--state-dir", str(tmp_path / "state")]
    result = cli.invoke(main, ["triggers", "iris", "--json", *options])
    assert result.exit_code == 0, result.output
    schedule, data = json.loads(result.output)
    assert schedule == {
        "model": "iris",
        "trigger": "schedule",
        "watches": "0 3 * * 1 (UTC)",
        "last_fired": None,
        "next": "due now",  # armed in 2020: its ticks since fire on the controller's next tick, once
        "why": "armed 2020-01-07T12:00:00+00:00; no tick since",
    }
    assert data == {
        "model": "iris",
        "trigger": "dataChange",
        "watches": "iris (not watched: sklearn:// has no version to watch), fresh",
        "last_fired": fired_at.isoformat(),
        "next": "on new data",
        "why": f"Retrain iris: new data (fresh) → branch {BRANCH}",
    }
    table = cli.invoke(main, ["triggers", *options])
    assert table.exit_code == 0 and "dataChange" in table.output and f"→ branch {BRANCH}" in table.output
    unknown = cli.invoke(main, ["triggers", "nope", *options])
    assert unknown.exit_code == 1 and "no model 'nope'" in unknown.output


def test_proposing_a_reason_again_commits_nothing_twice(tmp_path: Path, work: GitRepo) -> None:
    """A controller stopped between its commit and its audit entry finds the reason already committed."""
    clock = FakeClock(datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    controller = build(tmp_path, work, clock)
    try:
        assert controller.triggers is not None
        model = controller.main_catalog().models["iris"]
        known, seen = (
            {"fresh": Version("digest", "sha256:1")},
            {"fresh": Version("digest", digest("x,y\n1,0\n"))},
        )
        reason = data_reason(model, ["fresh"], known, seen)
        proposer = controller.triggers.proposer
        first = proposer.propose(model, reason)
        again = proposer.propose(model, reason)
        assert first.committed and not again.committed
        assert again.commit == first.commit == work.git("rev-parse", BRANCH)
        assert work.git("rev-list", "--count", f"main..{BRANCH}") == "1"
    finally:
        controller.close()

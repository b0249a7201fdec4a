"""Retrains on GitHub: one pull request per model, updated by later reasons, stopped by closing it.

The controller is built as ``flywheel run`` builds it with
``FLYWHEEL_GITHUB_*`` set; it mirrors a bare "GitHub" repository over
``file://`` and talks to the local GitHub API with PyGithub; the API writes
its commits and branches into that same bare repository, as GitHub would
(:mod:`tests.fakes.github_git`). A fake clock, runner and serving. Pins down
the issue's "done when" on GitHub:

* new data opens one pull request from ``flywheel/retrain/iris`` to main,
  whose title and description say which data changed; its commit, made
  through the Git Data API, pins the new digest; the mirror fetches it and
  the proposal is trained and reported on that pull request;
* a later reason is a new commit on the same branch and updates the same
  pull request's title and description: never a second one; that commit is
  trained although the pull request (recorded by the poller) is by
  Flywheel's account, which main's policy does not name: it is the commit
  the trigger made;
* closed unmerged, it is left alone (no commit, no pull request) until a new
  reason, which starts the branch again from main in a new pull request.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from controller.app import Controller, build_controller
from controller.backends.forge.github import GitHubSender
from controller.backends.forge.github_retrain import GitHubRetrainBranches
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.clock import FakeClock
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, GitHubSettings, Settings
from tests.fakes.github_api import FakeGitHub
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration

BRANCH = "flywheel/retrain/iris"
SPEC = "specs/iris/model.yaml"
CHECK = 60.0


@pytest.fixture
def origin(tmp_path: Path) -> tuple[GitRepo, Path]:
    """A working clone and its bare "GitHub" origin, with main pushed; iris reads a local CSV file."""
    work = GitRepo(tmp_path / "work")
    scaffold(work.path)
    (tmp_path / "fresh.csv").write_text("x,y\n1,0\n")
    work.edit(
        SPEC,
        '      version: "1"\n',
        f'      version: "1"\n    - name: fresh\n      uri: {(tmp_path / "fresh.csv").as_uri()}\n',
    )
    work.write(SPEC, work.read(SPEC) + "  triggers:\n    dataChange: true\n")
    work.commit("iris: retrain on new data")
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work.git("remote", "add", "origin", str(bare))
    work.git("push", "-q", "origin", "main")
    return work, bare


@pytest.fixture
def github(origin: tuple[GitRepo, Path]) -> Iterator[FakeGitHub]:
    with FakeGitHub(git_dir=origin[1]) as fake:
        yield fake


def build(tmp_path: Path, bare: Path, github: FakeGitHub, clock: FakeClock) -> Controller:
    settings = GitHubSettings(
        repository=github.repository, api_url=github.api_url, token="ghp_test_token", poll_seconds=1
    )
    controller = build_controller(
        Settings(
            controller=ControllerSettings(
                repo=f"file://{bare}", state_dir=tmp_path / "state", promote=False, data_check_seconds=CHECK
            ),
            github=settings,
        ),
        serving=FakeServing(),
        clock=clock,
    )
    # PyGithub waits a second between writes by default; the local API needs no such courtesy.
    quick = {"seconds_between_requests": None, "seconds_between_writes": None}
    controller.senders["github"] = GitHubSender.from_settings(
        controller.store, settings, clock=clock, **quick
    )
    assert controller.triggers is not None
    controller.triggers.proposer.branches = GitHubRetrainBranches(settings, release_branch="main", **quick)
    controller.proposals.runners = {
        "local": FakeRunner(
            {"evaluate": ScriptedStep(metrics={"accuracy": 0.97, "f1_macro": 0.96, "log_loss": 0.1})}
        )
    }
    return controller


def turn(controller: Controller, clock: FakeClock) -> None:
    clock.advance(CHECK)
    controller.tick()
    controller.reconcile_requested()
    while controller.proposals.busy:
        controller.proposals.collect()
    controller.deliver()


def origin_git(bare: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=bare, capture_output=True, text=True, check=True).stdout.strip()


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_one_pull_request_per_retrain_updated_by_new_reasons_and_stopped_by_closing_it(
    tmp_path: Path, origin: tuple[GitRepo, Path], github: FakeGitHub
) -> None:
    _, bare = origin
    data = tmp_path / "fresh.csv"
    clock = FakeClock(datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    controller = build(tmp_path, bare, github, clock)
    try:
        turn(controller, clock)  # armed: the data's first version
        assert github.pulls == []

        data.write_text("x,y\n1,0\n2,1\n")
        turn(controller, clock)
        [pull] = github.pulls
        assert (pull["number"], pull["state"], pull["head"]["ref"], pull["base"]["ref"]) == (
            1,
            "open",
            BRANCH,
            "main",
        )
        assert pull["title"] == "Retrain iris: new data (fresh)"
        first, second, third = digest("x,y\n1,0\n"), digest("x,y\n1,0\n2,1\n"), digest("x,y\n3,3\n")
        assert f"`{first}` → `{second}`" in pull["body"]
        head = origin_git(bare, "rev-parse", BRANCH)
        assert pull["head"]["sha"] == head
        spec = yaml.safe_load(origin_git(bare, "show", f"{BRANCH}:{SPEC}"))
        assert spec["spec"]["data"][1]["digest"] == digest("x,y\n1,0\n2,1\n")
        runs = controller.store.list_runs()
        assert [(r.ref, r.commit, r.status) for r in runs] == [(BRANCH, head, "succeeded")]
        assert any("iris" in c["body"] for c in github.comments_on(1))  # the report, on the pull request

        data.write_text("x,y\n3,3\n")
        turn(controller, clock)
        assert len(github.pulls) == 1  # the same pull request, updated
        assert controller.store.pull_number_for_branch(BRANCH) == 1  # the poller has recorded it by now
        second_head = origin_git(bare, "rev-parse", BRANCH)
        runs = controller.store.list_runs(ref=BRANCH)
        assert [(r.commit, r.status) for r in runs if r.commit == second_head] == [(second_head, "succeeded")]
        assert origin_git(bare, "rev-parse", f"{BRANCH}~1") == head
        assert github.pulls[0]["head"]["sha"] == origin_git(bare, "rev-parse", BRANCH)
        assert f"`{second}` → `{third}`" in github.pulls[0]["body"]

        github.close_pull(1)  # closed unmerged
        closed_head = origin_git(bare, "rev-parse", BRANCH)
        turn(controller, clock)
        turn(controller, clock)
        assert len(github.pulls) == 1 and origin_git(bare, "rev-parse", BRANCH) == closed_head

        data.write_text("x,y\n4,4\n")  # a new reason
        turn(controller, clock)
        assert [(p["number"], p["state"]) for p in github.pulls] == [(1, "closed"), (2, "open")]
        assert origin_git(bare, "rev-parse", f"{BRANCH}~1") == origin_git(bare, "rev-parse", "main")
        fired = [
            e.detail["proposal"] for e in controller.store.audit(model="iris") if e.action == "trigger.fired"
        ]
        assert fired == ["pull request #1 (opened)", "pull request #1 (updated)", "pull request #2 (opened)"]
    finally:
        controller.close()

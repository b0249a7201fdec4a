"""A fork's pull request on GitHub, end to end, with every webhook missed: polling alone drives it.

The controller is built as ``flywheel run`` builds it with ``FLYWHEEL_GITHUB_*``
set (:func:`controller.app.build_controller`, which wires the inbox's
handlers), mirrors a bare "GitHub" repository
over ``file://`` (which, like GitHub, keeps a fork's head under
``refs/pull/<n>/head``) and talks to the local GitHub API with PyGithub. Only
the pipeline runner is a fake. Pins down:

* the poller finds the pull request whose ``opened`` webhook never came;
* a fork's head runs nothing (a pending status says why) until a trusted
  reviewer's ``/flywheel ok-to-test``, found by polling, lets that commit run
  from ``pull/<n>/head``; the report is then the sticky comment on the pull
  request, and the commit status says how the run ended;
* the same comment delivered again by webhook runs nothing twice;
* ``/flywheel retrain`` on the pull request, without a model, retrains the one
  model it changes;
* a new push to the fork runs nothing until it is given its own ok-to-test,
  and a retrain is no way around that;
* an ok-to-test from someone main's policy does not allow is refused;
* once closed, the fork's head is no longer a proposal, though GitHub keeps its ref.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from controller.app import Controller, build_controller
from controller.backends.forge.github import GitHubSender
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, GitHubSettings, Settings
from tests.fakes.github_api import FakeGitHub, issue_comment_event
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration
FORK_PR = 7


@pytest.fixture
def origin(tmp_path: Path) -> tuple[GitRepo, Path]:
    """A working clone and its bare "GitHub" origin, with main pushed."""
    work = GitRepo(tmp_path / "work")
    scaffold(work.path)
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work.git("remote", "add", "origin", str(bare))
    work.git("push", "-q", "origin", "main")
    return work, bare


def fork_push(work: GitRepo, c_value: str) -> str:
    """Commit a change of iris's params on a fork branch and push it as GitHub does: refs/pull/7/head."""
    work.git("checkout", "-q", "-B", "fork-main", "main")
    work.edit("specs/iris/model.yaml", "    C: 1.0\n", f"    C: {c_value}\n")
    sha = work.commit(f"fork: C={c_value}")
    work.git("push", "-q", "-f", "origin", f"{sha}:refs/pull/{FORK_PR}/head")
    work.git("checkout", "-q", "main")
    return sha


def build(tmp_path: Path, bare: Path, github: FakeGitHub) -> Controller:
    settings = GitHubSettings(
        repository=github.repository, api_url=github.api_url, token="ghp_test_token", poll_seconds=0.01
    )
    controller = build_controller(
        Settings(
            controller=ControllerSettings(repo=f"file://{bare}", state_dir=tmp_path / "state", promote=False),
            github=settings,
        ),
        serving=FakeServing(),
    )
    # PyGithub waits a second between writes by default; the local API needs no such courtesy.
    controller.senders["github"] = GitHubSender.from_settings(
        controller.store,
        settings,
        seconds_between_requests=None,
        seconds_between_writes=None,
        clock=controller.clock,
    )
    controller.proposals.runners = {
        "local": FakeRunner(
            {"evaluate": ScriptedStep(metrics={"accuracy": 0.97, "f1_macro": 0.96, "log_loss": 0.1})}
        )
    }
    return controller


def step(controller: Controller) -> None:
    """One turn of the controller's loop: poll GitHub, handle the inbox, fetch, reconcile, deliver."""
    time.sleep(0.02)  # the poll interval
    controller.tick()
    controller.repository.fetch()
    controller.proposals.reconcile()
    while controller.proposals.busy:
        controller.proposals.collect()
        time.sleep(0.01)
    controller.tick()


def statuses_for(github: FakeGitHub, sha: str) -> list[tuple[str, str]]:
    return [(s["state"], s["description"]) for s in github.statuses if s["sha"] == sha]


def test_fork_pull_request_runs_only_after_ok_to_test_found_by_polling(
    tmp_path: Path, origin: tuple[GitRepo, Path], github: FakeGitHub
) -> None:
    work, bare = origin
    first = fork_push(work, "3.0")
    github.add_pull(FORK_PR, head_ref="main", head_sha=first, author="mallory", fork=True)
    controller = build(tmp_path, bare, github)
    store = controller.store
    ref = f"pull/{FORK_PR}/head"
    try:
        step(controller)  # no webhook ever came: the poller finds the pull request
        assert store.list_runs() == []
        (held,) = statuses_for(github, first)
        assert held[0] == "pending" and "ok-to-test" in held[1]

        github.add_comment(FORK_PR, "Looks fine.\n/flywheel ok-to-test", login="alice")
        step(controller)
        step(controller)
        (run,) = store.list_runs(ref=ref)
        assert (run.commit, run.model, run.status) == (first, "iris", "succeeded")
        comments = github.comments_on(FORK_PR)
        reports = [c for c in comments if c["body"].startswith("<!-- flywheel:report model=iris -->")]
        replies = [c for c in comments if "said ok-to-test" in c["body"]]
        assert len(reports) == 1 and len(replies) == 1
        assert statuses_for(github, first)[-1][0] == "success"

        # The same comment, delivered late by its webhook, runs nothing twice.
        ok_comment = next(c for c in comments if c["body"].endswith("/flywheel ok-to-test"))
        payload = issue_comment_event(
            ok_comment["body"], login="alice", number=FORK_PR, comment_id=ok_comment["id"]
        )
        store.put_event(source="github", delivery_id="late-1", kind="issue_comment.created", payload=payload)
        step(controller)
        assert len([c for c in github.comments_on(FORK_PR) if "said ok-to-test" in c["body"]]) == 1
        assert [e.action for e in store.audit()].count("command.ok-to-test") == 1

        # A retrain without a model name retrains the one model the pull request changes.
        github.add_comment(FORK_PR, "/flywheel retrain", login="alice")
        step(controller)
        step(controller)
        runs = store.list_runs(ref=ref)
        assert [(r.model, r.commit) for r in runs] == [("iris", first), ("iris", first)]

        # A new push to the fork needs its own ok-to-test.
        second = fork_push(work, "5.0")
        github.push_pull(FORK_PR, second)
        step(controller)
        step(controller)
        assert {r.commit for r in store.list_runs(ref=ref)} == {first}
        assert statuses_for(github, second)[0][0] == "pending"

        # Nor is a retrain a way around it.
        github.add_comment(FORK_PR, "/flywheel retrain iris", login="alice")
        step(controller)
        step(controller)
        assert {r.commit for r in store.list_runs(ref=ref)} == {first}
        assert "Not retraining: #7 is from a fork by mallory" in github.comments_on(FORK_PR)[-1]["body"]

        # Someone the policy does not allow cannot say ok-to-test.
        github.add_comment(FORK_PR, "/flywheel ok-to-test", login="mallory")
        step(controller)
        step(controller)
        assert {r.commit for r in store.list_runs(ref=ref)} == {first}
        refused = [e for e in store.audit() if e.action == "command.refused"]
        assert refused and refused[-1].detail.get("command") == "ok-to-test"

        # Closed: GitHub keeps refs/pull/7/head, but it is no longer a proposal.
        github.close_pull(FORK_PR)
        step(controller)
        assert ref not in controller.proposals.heads()
    finally:
        controller.close()

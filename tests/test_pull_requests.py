"""Review targets that name their pull request (controller.engine.pull_requests).

Pins down: the forge the reconciler gets on GitHub puts in every report's and
status's target the number of the proposal's pull request, as recorded from
its ``pull_request`` event (a branch of this repository) or as its own ref
says (a fork's ``pull/<n>/head``); a target that names one keeps it; a branch
no pull request is known for goes without, for the sender to look up.
"""

from __future__ import annotations

import pytest

from controller.backends.forge import CommitState, ReviewTarget
from controller.backends.store.sql import SqlStore
from controller.engine.pull_requests import PullRequestTargets, pull_request_number
from controller.engine.trust import record_pull_request
from tests.fakes.github_api import pull_request_event

pytestmark = pytest.mark.unit
SHA = "a" * 40


class Recorder:
    """A forge that keeps the targets it is given."""

    def __init__(self) -> None:
        self.targets: list[ReviewTarget] = []

    def publish_report(self, target: ReviewTarget, body: str) -> None:
        self.targets.append(target)

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        self.targets.append(target)


def test_each_target_names_the_pull_request_its_event_told(store: SqlStore) -> None:
    opened = pull_request_event("opened", number=4, head_ref="tune", head_sha=SHA, author="a")
    record_pull_request(store, opened)
    recorder = Recorder()
    forge = PullRequestTargets(recorder, store)
    forge.publish_report(ReviewTarget("tune", "iris", SHA), "report")
    forge.set_status(ReviewTarget("pull/9/head", "iris", SHA), "pending", "held")
    forge.set_status(ReviewTarget("pushed-first", "iris", SHA), "pending", "training")
    forge.set_status(ReviewTarget("tune", "iris", SHA, pull_request=12), "success", "told already")
    assert [(t.proposal, t.pull_request) for t in recorder.targets] == [
        ("tune", 4),
        ("pull/9/head", 9),
        ("pushed-first", None),  # a push polled before its pull request: the sender looks it up
        ("tune", 12),
    ]


def test_a_fork_is_not_taken_for_a_branch_of_ours(store: SqlStore) -> None:
    fork = pull_request_event("opened", number=8, head_ref="main", head_sha=SHA, author="m", fork=True)
    record_pull_request(store, fork)
    assert pull_request_number(store, "main") is None  # the fork's branch name says nothing of ours
    assert pull_request_number(store, "pull/8/head") == 8

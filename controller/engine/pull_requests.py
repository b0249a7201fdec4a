"""Review targets that name their pull request: the number a ``pull_request`` event told, for the forge.

The inbox consumer (:mod:`controller.engine.github_events`) records each
pull request a ``pull_request`` event (delivered or polled) describes
(:func:`controller.engine.trust.record_pull_request`), and asks the proposal
reconciler to reconcile that proposal. The reconciler and the judge publish
reports and statuses for a ref; :class:`PullRequestTargets` is the forge the
composition root hands them on GitHub: it puts the number of the ref's pull
request in each :class:`~controller.backends.forge.ReviewTarget`
(:func:`pull_request_number`: the number in a fork's ``pull/<n>/head``, or
the pull request recorded with the branch as its head) before the real
forge queues it, so that the GitHub sender posts to that pull request as it
is, without asking GitHub which one a branch has. A ref no pull request is
known for yet (a push polled before its pull request) goes without a
number, and the sender looks it up.
"""

from __future__ import annotations

from dataclasses import replace

from controller.backends.forge import CommitState, Forge, ReviewTarget
from controller.backends.store import PullRequestRecords, pull_ref_number

__all__ = ["PullRequestTargets", "pull_request_number"]


def pull_request_number(pulls: PullRequestRecords, ref: str) -> int | None:
    """``ref``'s pull request: the number in ``pull/<n>/head``, or the one recorded with ``ref`` as head."""
    number = pull_ref_number(ref)
    return number if number is not None else pulls.pull_number_for_branch(ref)


class PullRequestTargets:
    """A :class:`~controller.backends.forge.Forge` that names each target's pull request for ``forge``."""

    def __init__(self, forge: Forge, pulls: PullRequestRecords) -> None:
        self.forge = forge
        self._pulls = pulls

    def publish_report(self, target: ReviewTarget, body: str) -> None:
        self.forge.publish_report(self._numbered(target), body)

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        self.forge.set_status(self._numbered(target), state, description)

    def _numbered(self, target: ReviewTarget) -> ReviewTarget:
        if target.pull_request is not None:
            return target
        return replace(target, pull_request=pull_request_number(self._pulls, target.proposal))

"""The forge: where proposals are reviewed (local branches, or GitHub pull requests).

One narrow interface. The reconciler publishes one review report per proposal
and model, updated in place on each new result, and one commit status per
proposal, model and commit. Implementations: :mod:`.local` (the embedded home:
reports in the store) and, on the cluster home, GitHub through the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

CommitState = Literal["pending", "success", "failure", "error"]


@dataclass(frozen=True)
class ReviewTarget:
    """One model on one proposal at one commit, and the proposal's pull request when the forge has one.

    ``pull_request`` is the number of the proposal's pull request, carried
    from the ``pull_request`` event that told of it
    (:class:`controller.engine.pull_requests.PullRequestTargets` puts it
    here); ``None`` when none is known (the local forge has none; on GitHub a
    branch pushed before its pull request was heard of), and the forge then
    finds it itself.
    """

    proposal: str  # the ref the reconciler trains: a branch, or pull/<n>/head for a fork's pull request
    model: str
    commit: str
    pull_request: int | None = None


@dataclass(frozen=True)
class Review:
    """What a forge shows for one model on one proposal."""

    proposal: str
    model: str
    commit: str
    state: CommitState
    description: str
    body: str
    updated_at: float


class Forge(Protocol):
    def publish_report(self, target: ReviewTarget, body: str) -> None:
        """Create or update, in place, the report of ``target.model`` on ``target.proposal``."""

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        """Set the commit status of ``target.model`` at ``target.commit``."""

"""What Flywheel keeps of GitHub: pull requests, ok-to-test grants, handled comments, ids and the poll cursor.

The trust gate (:mod:`controller.engine.trust`) records each pull request from
its ``pull_request`` events and reads it back to decide whether its code may
run; the comment commands grant ``ok-to-test`` for one head commit and mark
each comment handled, so that a webhook and a poll of the same comment run its
commands once; the GitHub forge's sender remembers the ids of the check runs
and comments it made (or the pull request it found for a branch), so that it
edits them in place after a crash; the poller keeps its cursor here.

The records are plain: nothing here talks to GitHub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = [
    "BranchPullRef",
    "CheckRunRef",
    "GitHubRef",
    "OkToTest",
    "PollCursor",
    "PullRequest",
    "PullRequestRecords",
    "ReplyCommentRef",
    "ReportCommentRef",
    "pull_ref_number",
]

_PULL_REF = re.compile(r"(?:refs/)?pull/(\d+)(?:/head|/merge)?")


def pull_ref_number(ref: str) -> int | None:
    """The number in a pull request's own ref (``pull/<n>/head``, how a fork's head is fetched)."""
    match = _PULL_REF.fullmatch(ref)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class PullRequest:
    """What Flywheel remembers of one pull request, from its latest ``pull_request`` event."""

    number: int
    head_ref: str
    head_sha: str
    base_ref: str
    author: str  # the GitHub login that opened it
    fork: bool  # the head lives in another repository than the base
    state: str  # open | closed
    merged: bool
    updated_at: str  # GitHub's ISO timestamp, to drop events that arrive out of order

    @property
    def ref(self) -> str:
        """The ref the proposal reconciler runs: the head branch, or ``pull/<n>/head`` for a fork."""
        return f"pull/{self.number}/head" if self.fork else self.head_ref


@dataclass(frozen=True)
class OkToTest:
    """A trusted person's ``/flywheel ok-to-test`` for pull request ``number`` at head commit ``sha``."""

    number: int
    sha: str
    granted_at: datetime


@dataclass(frozen=True)
class CheckRunRef:
    """The check run of ``model`` on ``commit`` (its id is GitHub's)."""

    repository: str
    commit: str
    model: str


@dataclass(frozen=True)
class ReportCommentRef:
    """The sticky report comment of ``model`` on pull request ``number``."""

    repository: str
    number: int
    model: str


@dataclass(frozen=True)
class ReplyCommentRef:
    """The answer to the commands of comment ``in_reply_to``."""

    repository: str
    in_reply_to: int


@dataclass(frozen=True)
class BranchPullRef:
    """The pull request the sender found through the API for a branch no event told about (its number)."""

    repository: str
    branch: str


GitHubRef = CheckRunRef | ReportCommentRef | ReplyCommentRef | BranchPullRef


@dataclass(frozen=True)
class PollCursor:
    """Where the poller of comments stands."""

    listening_since: datetime  # comments created before are history, not commands to Flywheel
    comments_since: datetime  # the newest comment update seen


class PullRequestRecords(Protocol):
    """Pull requests and what Flywheel did about them on GitHub."""

    def pull_request(self, number: int) -> PullRequest | None: ...

    def pull_number_for_branch(self, branch: str) -> int | None:
        """The pull request last recorded with ``branch`` of this repository as its head (forks map none)."""
        ...

    def open_pull_requests(self) -> list[PullRequest]:
        """The pull requests last recorded open, by number."""
        ...

    def save_pull_request(self, pull: PullRequest) -> PullRequest:
        """Record ``pull`` unless the stored record is newer (GitHub's ``updated_at``); return what is stored.

        GitHub does not promise the order of its events. A pull request whose
        head is a branch of this repository maps that branch to its number.
        """
        ...

    def ok_to_test(self, number: int) -> OkToTest | None:
        """The latest ok-to-test of pull request ``number``; it covers only its ``sha``."""
        ...

    def grant_ok_to_test(self, *, number: int, sha: str) -> OkToTest: ...

    def comment_handled(self, comment_id: int) -> bool:
        """Whether the commands of comment ``comment_id`` have run."""
        ...

    def mark_comment_handled(self, comment_id: int, *, delivery_id: str) -> None: ...

    def github_id(self, ref: GitHubRef) -> int | None:
        """The id GitHub gave what ``ref`` names (for a :class:`BranchPullRef`, a pull request's number)."""
        ...

    def remember_github_id(self, ref: GitHubRef, github_id: int) -> None: ...

    def poll_cursor(self) -> PollCursor | None:
        """Where the comment poller stands; ``None`` before its first poll."""
        ...

    def save_poll_cursor(self, cursor: PollCursor) -> None: ...

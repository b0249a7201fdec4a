"""The local forge's reviews: one report per proposal and model, and the history of commit statuses.

Written by :class:`controller.backends.forge.local.LocalForge` (the embedded
home's review surface) and read by ``flywheel review`` and the status views.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypedDict, Unpack

__all__ = ["CommitStatus", "Review", "ReviewRecords", "ReviewState", "ReviewUpdate"]

ReviewState = Literal["pending", "success", "failure", "error"]


@dataclass(frozen=True)
class Review:
    """The local forge's report of one model on one proposal, and its latest status."""

    proposal: str
    model: str
    commit: str
    state: ReviewState
    description: str
    body: str
    updated_at: datetime


@dataclass(frozen=True)
class CommitStatus:
    """One status set on one model of a proposal at one commit."""

    proposal: str
    model: str
    commit: str
    state: ReviewState
    description: str
    at: datetime


class _ReviewKeys(TypedDict):
    proposal: str
    model: str
    commit: str


class ReviewUpdate(_ReviewKeys, total=False):
    """What :meth:`ReviewRecords.save_review` takes: the review's key and commit, and what changes."""

    body: str | None
    state: ReviewState | None
    description: str | None


class ReviewRecords(Protocol):
    """Reports updated in place, and every status ever set."""

    def save_review(self, **review: Unpack[ReviewUpdate]) -> Review:
        """Create or update in place the review of ``model`` on ``proposal``.

        ``body`` left out keeps the current report; ``state`` given also appends
        to the commit's status history. A new commit starts ``pending``.
        """
        ...

    def reviews(self, *, proposal: str | None = None, model: str | None = None) -> list[Review]: ...

    def commit_statuses(self, *, proposal: str, model: str) -> list[CommitStatus]: ...

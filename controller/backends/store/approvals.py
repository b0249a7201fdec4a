"""Approvals: decisions on one model version for one environment, by whom and through which channel.

Written by the operator commands (CLI, GitHub comments, Slack buttons) and
read by the rollout engine's approval gates. Append-only: a decision is
never changed, a later one is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypedDict, Unpack

__all__ = ["Approval", "ApprovalChannel", "ApprovalRecords", "Decision", "NewApproval"]

Decision = Literal["approve", "reject"]
ApprovalChannel = Literal["cli", "github", "slack", "dashboard"]


@dataclass(frozen=True)
class Approval:
    """A decision on one model version for one environment."""

    id: int
    model: str
    version: int
    environment: str
    user: str
    decision: Decision
    channel: ApprovalChannel
    comment: str
    created_at: datetime
    expires_at: datetime | None = None

    def valid_at(self, when: datetime) -> bool:
        return self.expires_at is None or when < self.expires_at


class _NewApprovalKeys(TypedDict):
    user: str
    decision: Decision
    channel: ApprovalChannel
    model: str
    version: int
    environment: str


class NewApproval(_NewApprovalKeys, total=False):
    """What :meth:`ApprovalRecords.add_approval` takes; left out: no comment, no expiry."""

    comment: str
    expires_at: datetime | None


class ApprovalRecords(Protocol):
    """Decisions bound to a model version and an environment (never to a commit)."""

    def add_approval(self, **approval: Unpack[NewApproval]) -> Approval: ...

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]:
        """Every decision on this version for this environment, oldest first, expired ones included."""
        ...

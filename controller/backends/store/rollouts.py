"""Rollouts and the serving history: a version's way through its environments, and who served when.

The rollout engine creates and moves rollouts (compare-and-set on a
revision, so that concurrent writers never overwrite each other) and records
every traffic split; the history answers "what served production at time T"
(Invariant 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypedDict, Unpack

from controller.backends.store.common import JSONObject

__all__ = ["NewRollout", "RolloutChanges", "RolloutRecord", "RolloutRecords", "ServingRecord"]


@dataclass(frozen=True)
class RolloutRecord:
    """Progress of one model version through a sequence of environments.

    ``state`` is the engine's to define; the store only knows that a rollout
    with no ``finished_at`` is active. ``revision`` moves on every update, so
    that concurrent writers can compare-and-set.
    """

    id: int
    model: str
    version: int
    stages: tuple[str, ...]  # environment names, in order
    state: str
    stage_index: int
    step_index: int  # canary step within the current stage
    weight: int  # percent of traffic on the new version in the current stage
    analysis_failures: int
    paused: bool
    revision: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    detail: JSONObject = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.finished_at is None

    @property
    def environment(self) -> str | None:
        """The environment of the current stage (``None`` past the last one)."""
        return self.stages[self.stage_index] if 0 <= self.stage_index < len(self.stages) else None


class RolloutChanges(TypedDict, total=False):
    """The fields :meth:`RolloutRecords.update_rollout` may change."""

    state: str
    stage_index: int
    step_index: int
    weight: int
    analysis_failures: int
    paused: bool
    finished_at: datetime | None
    detail: JSONObject


@dataclass(frozen=True)
class ServingRecord:
    """From ``at`` on, ``version`` of ``model`` took ``weight`` percent of ``environment``'s traffic."""

    id: int
    environment: str
    model: str
    version: int
    weight: int
    at: datetime


class _NewRolloutKeys(TypedDict):
    model: str
    version: int
    stages: tuple[str, ...] | list[str]  # environment names, in order
    state: str


class NewRollout(_NewRolloutKeys, total=False):
    """What :meth:`RolloutRecords.create_rollout` takes; ``detail`` left out is empty."""

    detail: JSONObject | None


class RolloutRecords(Protocol):
    """Rollouts, updated by compare-and-set, and the history of traffic splits."""

    def create_rollout(self, **rollout: Unpack[NewRollout]) -> RolloutRecord:
        """Start a rollout; for an existing ``(model, version, stages)`` return that one unchanged."""
        ...

    def get_rollout(self, rollout_id: int) -> RolloutRecord: ...

    def update_rollout(
        self, rollout_id: int, *, expected_revision: int, **changes: Unpack[RolloutChanges]
    ) -> RolloutRecord:
        """Apply ``changes`` if still at ``expected_revision``; else raise :class:`~.Conflict`."""
        ...

    def active_rollouts(self) -> list[RolloutRecord]: ...

    def rollouts_for(self, model: str) -> list[RolloutRecord]:
        """Rollouts of ``model``, newest first."""
        ...

    def record_serving(
        self, *, environment: str, model: str, version: int, weight: int, at: datetime | None = None
    ) -> ServingRecord:
        """From ``at`` on, ``version`` takes ``weight`` percent (0 = no longer serving)."""
        ...

    def record_traffic(
        self, *, environment: str, model: str, weights: Mapping[int, int], at: datetime | None = None
    ) -> list[ServingRecord]:
        """Record a whole traffic split: versions serving before but absent from ``weights`` drop to 0."""
        ...

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]:
        """``(version, weight)`` pairs serving at ``at``, by version; weight-0 versions left out."""
        ...

    def served_in(self, *, environment: str, at: datetime) -> dict[str, list[tuple[int, int]]]:
        """:meth:`served_at` of every model served in ``environment`` at ``at``, in one read."""
        ...

    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]: ...

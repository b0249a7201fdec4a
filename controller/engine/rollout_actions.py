"""What the rollout planner is given and what it returns: observations, actions, plans.

:func:`controller.engine.rollout_plan.plan_rollout` reads
:class:`Observations` (made by the rollout engine, as :class:`Needs` asks)
and returns a :class:`RolloutPlan` of actions; the engine
(:mod:`controller.engine.rollout`) performs them in order. Plain records,
nothing from the backends: versions are numbers (or the labels servers use),
environments are names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.engine.approvals import Approval
from controller.engine.rollout_state import ACTOR, Request, RolloutState
from controller.engine.verdicts import RoundVerdict

__all__ = [
    "Action",
    "Audit",
    "Deploy",
    "Failure",
    "Needs",
    "NoticeKind",
    "Notify",
    "Observations",
    "Retire",
    "RetireAllBut",
    "RolloutPlan",
    "Route",
    "Save",
    "SmokeTest",
]

NoticeKind = Literal[
    "rollout_started",
    "step_reached",
    "analysis_inconclusive",
    "analysis_failed",
    "awaiting_approval",
    "approved",
    "promoted",
    "rolled_back",
    "rejected",
    "paused",
    "aborted",
]


@dataclass(frozen=True)
class Save:
    """Write ``state`` (compare-and-set), dropping the requests in ``consumed`` from the pending ones."""

    state: RolloutState
    consumed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Audit:
    """Append to the audit log, as ``actor`` (the engine by default), about the rollout in ``environment``."""

    action: str
    environment: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)
    actor: str = ACTOR


@dataclass(frozen=True)
class Deploy:
    """Run ``version`` of the model in ``environment`` (nothing new when it runs already)."""

    environment: str
    version: int
    failure: str | None = None  # the reason the rollout fails with when this fails; None: retried


@dataclass(frozen=True)
class SmokeTest:
    """Send the spec's sample inputs to ``version``'s own server in ``environment``."""

    environment: str
    version: int
    inputs: tuple[tuple[Any, ...], ...]
    failure: str | None = None


@dataclass(frozen=True)
class Route:
    """Split ``environment``'s traffic for the model: version number → percent; record it in the history."""

    environment: str
    weights: Mapping[int, int]
    failure: str | None = None


@dataclass(frozen=True)
class Retire:
    """Stop the server of ``version`` (a label) in ``environment``."""

    environment: str
    version: str


@dataclass(frozen=True)
class RetireAllBut:
    """Stop every server of the model in ``environment`` but ``keep``'s (read after the actions before it)."""

    environment: str
    keep: str


@dataclass(frozen=True)
class Notify:
    """Tell people, through the outbox (keyed by kind, environment, step and occurrence)."""

    kind: NoticeKind
    environment: str
    message: str
    step: int | None = None
    occurrence: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)


Action = Save | Audit | Deploy | SmokeTest | Route | Retire | RetireAllBut | Notify


@dataclass(frozen=True)
class Failure:
    """A side effect of the last plan that failed, with the error it failed with."""

    action: Deploy | SmokeTest | Route
    error: str


@dataclass(frozen=True)
class Observations:
    """What the engine saw before planning (only what :func:`needs` asked for is filled in)."""

    requests: tuple[Request, ...] = ()
    stable: int | None = None  # the version taking most of the stage's traffic, other than this one
    deployed: tuple[str, ...] = ()  # labels of the model's versions running in the stage's environment
    verdict: RoundVerdict | None = None  # the analysis round measured now
    approvals: tuple[Approval, ...] = ()  # decisions recorded for this version in this stage's environment
    failure: Failure | None = None
    discrepancies: tuple[str, ...] = ()  # how what serves in the stage differs from the store (always read)


@dataclass(frozen=True)
class Needs:
    """What the engine must observe for the next plan."""

    stable: bool = False
    deployed: bool = False
    verdict: bool = False
    approvals: bool = False


@dataclass(frozen=True)
class RolloutPlan:
    """The actions to perform, in order, and the state they lead to."""

    actions: tuple[Action, ...]
    state: RolloutState

    @property
    def consumed(self) -> frozenset[str]:
        """The ids of the requests the plan acted on."""
        return frozenset(id for a in self.actions if isinstance(a, Save) for id in a.consumed)

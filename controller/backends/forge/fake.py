"""An in-memory forge for engine tests: records every report and status it is given."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.backends.forge import CommitState, Review, ReviewTarget
from controller.clock import SYSTEM_CLOCK, Clock


@dataclass
class FakeForge:
    reviews: dict[tuple[str, str], Review] = field(default_factory=dict)
    statuses: list[tuple[ReviewTarget, CommitState, str]] = field(default_factory=list)
    publications: int = 0
    clock: Clock = SYSTEM_CLOCK  # stamps each review's updated_at; a test may pass its FakeClock

    def publish_report(self, target: ReviewTarget, body: str) -> None:
        self.publications += 1
        old = self.reviews.get((target.proposal, target.model))
        state: CommitState = old.state if old and old.commit == target.commit else "pending"
        description = old.description if old and old.commit == target.commit else ""
        self.reviews[(target.proposal, target.model)] = Review(
            target.proposal, target.model, target.commit, state, description, body, self.clock.timestamp()
        )

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        self.statuses.append((target, state, description))
        old = self.reviews.get((target.proposal, target.model))
        body = old.body if old else ""
        self.reviews[(target.proposal, target.model)] = Review(
            target.proposal, target.model, target.commit, state, description, body, self.clock.timestamp()
        )

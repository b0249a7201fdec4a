"""The local forge of the embedded home: branches are proposals, reviews live in the store.

``flywheel review show`` reads them back with :meth:`LocalForge.review`.
"""

from __future__ import annotations

from controller.backends.forge import CommitState, Review, ReviewTarget
from controller.backends.store import ReviewRecords


class LocalForge:
    def __init__(self, store: ReviewRecords) -> None:
        self._store = store

    def publish_report(self, target: ReviewTarget, body: str) -> None:
        self._store.save_review(proposal=target.proposal, model=target.model, commit=target.commit, body=body)

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        self._store.save_review(
            proposal=target.proposal,
            model=target.model,
            commit=target.commit,
            state=state,
            description=description,
        )

    def reviews(self, proposal: str, *, model: str | None = None) -> list[Review]:
        return [
            Review(r.proposal, r.model, r.commit, r.state, r.description, r.body, r.updated_at.timestamp())
            for r in self._store.reviews(proposal=proposal, model=model)
        ]

"""The local forge's reviews in SQL: one report per proposal and model, and every status set.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.ReviewRecords`).
"""

from __future__ import annotations

from typing import Unpack

from sqlalchemy import insert, select, update

from controller.backends.store.reviews import CommitStatus, Review, ReviewUpdate
from controller.backends.store.sql.base import SqlBase, arguments
from controller.backends.store.sql.mapping import record, records
from controller.backends.store.sql.tables import commit_statuses, reviews

__all__ = ["ReviewsSql"]


class ReviewsSql(SqlBase):
    def save_review(self, **review: Unpack[ReviewUpdate]) -> Review:
        given = arguments("save_review", ReviewUpdate, review)
        proposal, model, commit = given["proposal"], given["model"], given["commit"]
        body, state, description = given.get("body"), given.get("state"), given.get("description")
        now = self._now()
        this = select(reviews).where(reviews.c.proposal == proposal, reviews.c.model == model)
        with self._write() as conn:
            row = conn.execute(this).mappings().first()
            same_commit = row is not None and row["commit"] == commit
            values = {
                "commit": commit,
                # A new commit starts pending until a status for it is set.
                "state": state or (row["state"] if row is not None and same_commit else "pending"),
                "description": description
                if description is not None
                else (row["description"] if row is not None and same_commit else ""),
                "body": body if body is not None else (row["body"] if row is not None else ""),
                "updated_at": now,
            }
            if row is None:
                conn.execute(insert(reviews).values(proposal=proposal, model=model, **values))
            else:
                conn.execute(
                    update(reviews)
                    .where(reviews.c.proposal == proposal, reviews.c.model == model)
                    .values(**values)
                )
            if state is not None:
                conn.execute(
                    insert(commit_statuses).values(
                        proposal=proposal,
                        model=model,
                        commit=commit,
                        state=state,
                        description=description or "",
                        at=now,
                    )
                )
            return record(Review, conn.execute(this).mappings().one())

    def reviews(self, *, proposal: str | None = None, model: str | None = None) -> list[Review]:
        query = select(reviews).order_by(reviews.c.proposal, reviews.c.model)
        if proposal is not None:
            query = query.where(reviews.c.proposal == proposal)
        if model is not None:
            query = query.where(reviews.c.model == model)
        with self._read() as conn:
            return records(Review, conn.execute(query).mappings())

    def commit_statuses(self, *, proposal: str, model: str) -> list[CommitStatus]:
        table = commit_statuses
        query = select(table).where(table.c.proposal == proposal, table.c.model == model).order_by(table.c.id)
        with self._read() as conn:
            return records(CommitStatus, conn.execute(query).mappings())

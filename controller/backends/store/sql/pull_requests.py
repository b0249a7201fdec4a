"""GitHub's records in SQL: pull requests, head branches, ok-to-test, handled comments, ids, the poll cursor.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.PullRequestRecords`). Each kind of
:data:`~controller.backends.store.GitHubRef` has a table of its own whose key
columns are the ref's fields, plus the ``github_id`` GitHub gave; one pair of
methods serves them all through ``dataclasses.fields``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import select

from controller.backends.store.pull_requests import GitHubRef, OkToTest, PollCursor, PullRequest
from controller.backends.store.sql.base import SqlBase
from controller.backends.store.sql.mapping import found, keyed, record, records
from controller.backends.store.sql.tables import (
    GITHUB_ID_TABLES,
    github_poll_cursor,
    handled_comments,
    ok_to_test,
    pull_request_branches,
    pull_requests,
)

__all__ = ["PullRequestsSql"]


def _key(ref: GitHubRef) -> dict[str, Any]:
    return {field.name: getattr(ref, field.name) for field in dataclasses.fields(ref)}


class PullRequestsSql(SqlBase):
    def pull_request(self, number: int) -> PullRequest | None:
        with self._read() as conn:
            return found(conn, PullRequest, keyed(pull_requests, number=number))

    def pull_number_for_branch(self, branch: str) -> int | None:
        table = pull_request_branches
        with self._read() as conn:
            number = conn.execute(select(table.c.number).where(table.c.branch == branch)).scalar()
        return None if number is None else int(number)

    def open_pull_requests(self) -> list[PullRequest]:
        query = select(pull_requests).where(pull_requests.c.state == "open").order_by(pull_requests.c.number)
        with self._read() as conn:
            return records(PullRequest, conn.execute(query).mappings())

    def save_pull_request(self, pull: PullRequest) -> PullRequest:
        values = dataclasses.asdict(pull) | {"recorded_at": self._now()}
        with self._write() as conn:
            row = (
                conn.execute(
                    select(pull_requests).where(pull_requests.c.number == pull.number).with_for_update()
                )
                .mappings()
                .first()
            )
            if row is not None and pull.updated_at and row["updated_at"] > pull.updated_at:
                return record(PullRequest, row)  # an older event than what is stored
            statement = self._upsert(pull_requests).values(**values)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["number"], set_={k: v for k, v in values.items() if k != "number"}
                )
            )
            if not pull.fork and pull.head_ref:
                branch = self._upsert(pull_request_branches).values(branch=pull.head_ref, number=pull.number)
                conn.execute(
                    branch.on_conflict_do_update(index_elements=["branch"], set_={"number": pull.number})
                )
        return pull

    def ok_to_test(self, number: int) -> OkToTest | None:
        with self._read() as conn:
            return found(conn, OkToTest, keyed(ok_to_test, number=number))

    def grant_ok_to_test(self, *, number: int, sha: str) -> OkToTest:
        grant = OkToTest(number=number, sha=sha, granted_at=self._now())
        statement = self._upsert(ok_to_test).values(**dataclasses.asdict(grant))
        statement = statement.on_conflict_do_update(
            index_elements=["number"], set_={"sha": sha, "granted_at": grant.granted_at}
        )
        with self._write() as conn:
            conn.execute(statement)
        return grant

    def comment_handled(self, comment_id: int) -> bool:
        table = handled_comments
        with self._read() as conn:
            found = conn.execute(select(table.c.comment_id).where(table.c.comment_id == comment_id)).first()
        return found is not None

    def mark_comment_handled(self, comment_id: int, *, delivery_id: str) -> None:
        statement = self._upsert(handled_comments).values(
            comment_id=comment_id, delivery_id=delivery_id, handled_at=self._now()
        )
        with self._write() as conn:
            conn.execute(statement.on_conflict_do_nothing(index_elements=["comment_id"]))

    def github_id(self, ref: GitHubRef) -> int | None:
        table = GITHUB_ID_TABLES[type(ref)]
        query = select(table.c.github_id).where(
            *(table.c[name] == value for name, value in _key(ref).items())
        )
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def remember_github_id(self, ref: GitHubRef, github_id: int) -> None:
        table = GITHUB_ID_TABLES[type(ref)]
        key = _key(ref)
        now = self._now()
        statement = self._upsert(table).values(**key, github_id=github_id, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=list(key), set_={"github_id": github_id, "updated_at": now}
        )
        with self._write() as conn:
            conn.execute(statement)

    def poll_cursor(self) -> PollCursor | None:
        with self._read() as conn:
            return found(conn, PollCursor, select(github_poll_cursor))

    def save_poll_cursor(self, cursor: PollCursor) -> None:
        values = dataclasses.asdict(cursor)
        statement = self._upsert(github_poll_cursor).values(id=1, **values)
        with self._write() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))

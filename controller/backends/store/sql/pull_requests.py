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

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Integer,
    String,
    Table,
    Text,
    select,
)

from controller.backends.store.pull_requests import (
    BranchPullRef,
    CheckRunRef,
    GitHubRef,
    OkToTest,
    PollCursor,
    PullRequest,
    ReplyCommentRef,
    ReportCommentRef,
)
from controller.backends.store.sql.base import SqlBase, metadata, time_column
from controller.backends.store.sql.mapping import record, records

__all__ = [
    "PullRequestsSql",
    "github_branch_pulls",
    "github_check_runs",
    "github_poll_cursor",
    "github_reply_comments",
    "github_report_comments",
    "handled_comments",
    "ok_to_test",
    "pull_request_branches",
    "pull_requests",
]

pull_requests = Table(
    "pull_requests",
    metadata,
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("head_ref", Text(), nullable=False),
    Column("head_sha", Text(), nullable=False),
    Column("base_ref", Text(), nullable=False),
    Column("author", Text(), nullable=False),
    Column("fork", Boolean(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("merged", Boolean(), nullable=False),
    Column("updated_at", Text(), nullable=False),
    time_column("recorded_at"),
)

pull_request_branches = Table(
    "pull_request_branches",
    metadata,
    Column("branch", Text(), primary_key=True),
    Column("number", Integer(), nullable=False),
)

ok_to_test = Table(
    "ok_to_test",
    metadata,
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("sha", Text(), nullable=False),
    time_column("granted_at"),
)

handled_comments = Table(
    "handled_comments",
    metadata,
    Column("comment_id", BigInteger(), primary_key=True, autoincrement=False),
    Column("delivery_id", Text(), nullable=False),
    time_column("handled_at"),
)


def _ids(name: str, *key: Column[Any]) -> Table:
    return Table(
        name,
        metadata,
        *key,
        Column("github_id", BigInteger(), nullable=False),
        time_column("updated_at"),
    )


github_check_runs = _ids(
    "github_check_runs",
    Column("repository", Text(), primary_key=True),
    Column("commit", Text(), primary_key=True),
    Column("model", Text(), primary_key=True),
)
github_report_comments = _ids(
    "github_report_comments",
    Column("repository", Text(), primary_key=True),
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("model", Text(), primary_key=True),
)
github_reply_comments = _ids(
    "github_reply_comments",
    Column("repository", Text(), primary_key=True),
    Column("in_reply_to", BigInteger(), primary_key=True, autoincrement=False),
)
github_branch_pulls = _ids(
    "github_branch_pulls",
    Column("repository", Text(), primary_key=True),
    Column("branch", Text(), primary_key=True),
)
_REF_TABLES: dict[type[Any], Table] = {
    CheckRunRef: github_check_runs,
    ReportCommentRef: github_report_comments,
    ReplyCommentRef: github_reply_comments,
    BranchPullRef: github_branch_pulls,
}

github_poll_cursor = Table(
    "github_poll_cursor",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    time_column("listening_since"),
    time_column("comments_since"),
    CheckConstraint("id = 1", name="ck_github_poll_cursor_one"),
)


def _key(ref: GitHubRef) -> dict[str, Any]:
    return {field.name: getattr(ref, field.name) for field in dataclasses.fields(ref)}


class PullRequestsSql(SqlBase):
    def pull_request(self, number: int) -> PullRequest | None:
        with self._read() as conn:
            row = (
                conn.execute(select(pull_requests).where(pull_requests.c.number == number)).mappings().first()
            )
        return None if row is None else record(PullRequest, row)

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
            row = conn.execute(select(ok_to_test).where(ok_to_test.c.number == number)).mappings().first()
        return None if row is None else record(OkToTest, row)

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
        table = _REF_TABLES[type(ref)]
        query = select(table.c.github_id).where(
            *(table.c[name] == value for name, value in _key(ref).items())
        )
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def remember_github_id(self, ref: GitHubRef, github_id: int) -> None:
        table = _REF_TABLES[type(ref)]
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
            row = conn.execute(select(github_poll_cursor)).mappings().first()
        return None if row is None else record(PollCursor, row)

    def save_poll_cursor(self, cursor: PollCursor) -> None:
        values = dataclasses.asdict(cursor)
        statement = self._upsert(github_poll_cursor).values(id=1, **values)
        with self._write() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))

"""GitHub's and Slack's records get tables of their own; ``meta`` keeps only controller-wide settings.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Up to 0003 these lived in ``meta`` as one key per object, and move here:

=====================================  ===================================
``github:pr:<n>`` (JSON)                ``pull_requests``
``github:branch:<branch>``              ``pull_request_branches``
``github:ok-to-test:<n>``               ``ok_to_test``
``github:comment-handled:<id>``         ``handled_comments``
``github:check:<repo>:<sha>:<model>``   ``github_check_runs``
``github:comment:<repo>:<n>:<model>``   ``github_report_comments``
``github:reply:<repo>:<id>``            ``github_reply_comments``
``github:sender:pr:<repo>:<branch>``    ``github_branch_pulls``
``github:poll:listening-since``,
``github:poll:comments-since``          ``github_poll_cursor`` (one row)
``slack.rollout:<model>:v<version>``    ``slack_messages``
=====================================  ===================================

``github:open-pulls`` was the list of the pull requests recorded open, kept
in step with their records: it is their ``state`` now, and goes. Every
``github:`` and ``slack.rollout:`` key is deleted. A value that does not
read as what its family's writer wrote (left by a Flywheel that accepted a
malformed delivery, or an id lost to a crash, stored empty) is not carried
over, with a warning: it counted as no record before, and counts as none
now. A time the old keys did not keep (when an ok-to-test was given, when a
comment was handled) is the key's ``meta.updated_at``.

The downgrade writes the records back as the 0003 keys.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("flywheel.store.migrations")

_INT_MAX = 2**31 - 1  # PostgreSQL's INTEGER
_BIGINT_MAX = 2**63 - 1
_NUMBER = re.compile(r"[1-9][0-9]{0,18}|0")  # as str(int) writes it: one spelling per number
_POLL_TIME = "%Y-%m-%dT%H:%M:%SZ"
_PULL_FIELDS: dict[str, type] = {
    "number": int,
    "head_ref": str,
    "head_sha": str,
    "base_ref": str,
    "author": str,
    "fork": bool,
    "state": str,
    "merged": bool,
    "updated_at": str,
}
_SLACK_REFERENCE = ("model", "version", "channel", "ts", "replied")

meta = sa.table(
    "meta",
    sa.column("key", sa.String()),
    sa.column("value", sa.Text()),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def _time(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _ids(name: str, *key: sa.Column[Any]) -> sa.Table:
    return sa.Table(
        name, _schema, *key, sa.Column("github_id", sa.BigInteger(), nullable=False), _time("updated_at")
    )


# The tables this revision adds, as they are at this revision.
_schema = sa.MetaData()
pull_requests = sa.Table(
    "pull_requests",
    _schema,
    sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("head_ref", sa.Text(), nullable=False),
    sa.Column("head_sha", sa.Text(), nullable=False),
    sa.Column("base_ref", sa.Text(), nullable=False),
    sa.Column("author", sa.Text(), nullable=False),
    sa.Column("fork", sa.Boolean(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("merged", sa.Boolean(), nullable=False),
    sa.Column("updated_at", sa.Text(), nullable=False),
    _time("recorded_at"),
    sa.Index("ix_pull_requests_state", "state", "number"),
)
pull_request_branches = sa.Table(
    "pull_request_branches",
    _schema,
    sa.Column("branch", sa.Text(), primary_key=True),
    sa.Column("number", sa.Integer(), nullable=False),
)
ok_to_test = sa.Table(
    "ok_to_test",
    _schema,
    sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("sha", sa.Text(), nullable=False),
    _time("granted_at"),
)
handled_comments = sa.Table(
    "handled_comments",
    _schema,
    sa.Column("comment_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("delivery_id", sa.Text(), nullable=False),
    _time("handled_at"),
)
github_check_runs = _ids(
    "github_check_runs",
    sa.Column("repository", sa.Text(), primary_key=True),
    sa.Column("commit", sa.Text(), primary_key=True),
    sa.Column("model", sa.Text(), primary_key=True),
)
github_report_comments = _ids(
    "github_report_comments",
    sa.Column("repository", sa.Text(), primary_key=True),
    sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("model", sa.Text(), primary_key=True),
)
github_reply_comments = _ids(
    "github_reply_comments",
    sa.Column("repository", sa.Text(), primary_key=True),
    sa.Column("in_reply_to", sa.BigInteger(), primary_key=True, autoincrement=False),
)
github_branch_pulls = _ids(
    "github_branch_pulls",
    sa.Column("repository", sa.Text(), primary_key=True),
    sa.Column("branch", sa.Text(), primary_key=True),
)
github_poll_cursor = sa.Table(
    "github_poll_cursor",
    _schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    _time("listening_since"),
    _time("comments_since"),
    sa.CheckConstraint("id = 1", name="ck_github_poll_cursor_one"),
)
slack_messages = sa.Table(
    "slack_messages",
    _schema,
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("channel", sa.Text(), nullable=False),
    sa.Column("ts", sa.Text(), nullable=False),
    sa.Column("view", sa.JSON(), nullable=False),
    sa.Column("replied", sa.JSON(), nullable=False),
    _time("updated_at"),
)


# ------------------------------------------------------------------- reading


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stamp(value: datetime) -> datetime:
    """A time as the store writes it: UTC, without an offset in SQLite (whose text then sorts in order)."""
    value = _utc(value)
    return value.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else value


def _number(text: str, *, limit: int = _INT_MAX) -> int | None:
    return int(text) if _NUMBER.fullmatch(text) and int(text) <= limit else None


def _skip(key: str, why: str) -> None:
    log.warning("state migration 0004: not carrying over the stored %s: %s", key[:200], why)


def _json(key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        _skip(key, "it is not JSON")
        return None


def _pull_request(key: str, number: int, value: str) -> dict[str, Any] | None:
    data = _json(key, value)
    if not isinstance(data, dict):
        if data is not None:
            _skip(key, "it is not a pull request record")
        return None
    record: dict[str, Any] = {}
    for name, kind in _PULL_FIELDS.items():
        field = data.get(name)
        if not isinstance(field, kind) or (kind is int and isinstance(field, bool)):
            _skip(key, f"its {name} is not a {kind.__name__}")
            return None
        record[name] = field
    if record["number"] != number:
        _skip(key, f"it records pull request {record['number']}")
        return None
    return record


def _slack_message(key: str, value: str) -> dict[str, Any] | None:
    state = _json(key, value)
    named = key.removeprefix("slack.rollout:").rpartition(":v")
    if not isinstance(state, dict):
        if state is not None:
            _skip(key, "it is not a Slack message's state")
        return None
    model, version, replied = state.get("model", named[0]), state.get("version"), state.get("replied", [])
    if version is None:
        version = _number(named[2])
    if not isinstance(model, str) or type(version) is not int or not 0 <= version <= _INT_MAX:
        _skip(key, "it names no model version")
        return None
    if not isinstance(replied, list) or not all(isinstance(r, str) for r in replied):
        replied = []
    return {
        "model": model,
        "version": version,
        "channel": str(state.get("channel") or ""),
        "ts": str(state.get("ts") or ""),
        "view": {name: item for name, item in state.items() if name not in _SLACK_REFERENCE},
        "replied": replied,
    }


def _poll_cursor(entries: Mapping[str, tuple[str, datetime]]) -> dict[str, Any] | None:
    times: list[datetime] = []
    for name in ("listening-since", "comments-since"):
        key = f"github:poll:{name}"
        if key not in entries:
            return None  # not polled yet
        try:
            times.append(datetime.strptime(entries[key][0], _POLL_TIME).replace(tzinfo=UTC))
        except ValueError:
            _skip(key, "it is not a time")
            return None
    return {"id": 1, "listening_since": _stamp(times[0]), "comments_since": _stamp(times[1])}


Row = tuple[str, dict[str, Any]]  # (table, row)


def _ref(kind: str, parts: list[str]) -> Row | None:
    """The table and key of an id GitHub gave, from the rest of its key."""
    if kind == "check" and len(parts) == 3:
        return "github_check_runs", {"repository": parts[0], "commit": parts[1], "model": parts[2]}
    if kind == "comment" and len(parts) == 3 and (number := _number(parts[1])) is not None:
        return "github_report_comments", {"repository": parts[0], "number": number, "model": parts[2]}
    if kind == "reply" and len(parts) == 2 and (answered := _number(parts[1], limit=_BIGINT_MAX)) is not None:
        return "github_reply_comments", {"repository": parts[0], "in_reply_to": answered}
    if kind == "sender" and len(parts) == 3 and parts[0] == "pr":
        return "github_branch_pulls", {"repository": parts[1], "branch": parts[2]}
    return None


def _github_row(key: str, value: str, updated: datetime) -> Row | None:
    """The row of one ``github:`` key, or ``None`` (with a warning when it is malformed)."""
    kind, _, rest = key.removeprefix("github:").partition(":")
    when = _stamp(updated)
    if kind in ("open-pulls", "poll"):
        return None  # the open list is the records' state now; the cursor is read as a whole
    if kind == "pr":
        number = _number(rest)
        if number is None:
            _skip(key, "it names no pull request number")
            return None
        pull = _pull_request(key, number, value)
        return None if pull is None else ("pull_requests", pull | {"recorded_at": when})
    if kind in ("branch", "ok-to-test", "comment-handled"):
        number = _number(value if kind == "branch" else rest, limit=_BIGINT_MAX)
        if number is None or (number > _INT_MAX and kind != "comment-handled") or not value:
            _skip(key, "it names no pull request or comment")
            return None
        if kind == "branch":
            return "pull_request_branches", {"branch": rest, "number": number}
        if kind == "ok-to-test":
            return "ok_to_test", {"number": number, "sha": value, "granted_at": when}
        return "handled_comments", {"comment_id": number, "delivery_id": value, "handled_at": when}
    ref = _ref(kind, rest.split(":"))
    github_id = _number(value, limit=_BIGINT_MAX)
    if ref is None:
        _skip(key, "it is no record Flywheel wrote")
        return None
    if github_id is None:
        _skip(key, "it holds no id (one lost is found again on GitHub)")
        return None
    return ref[0], ref[1] | {"github_id": github_id, "updated_at": when}


def _rows(entries: Mapping[str, tuple[str, datetime]]) -> Iterator[Row]:
    """``(table, row)`` for each entry of the old key families that reads as its writer wrote it."""
    for key, (value, updated) in entries.items():
        if key.startswith("slack.rollout:"):
            message = _slack_message(key, value)
            row = None if message is None else ("slack_messages", message | {"updated_at": _stamp(updated)})
        else:
            row = _github_row(key, value, updated)
        if row is not None:
            yield row
    cursor = _poll_cursor(entries)
    if cursor is not None:
        yield "github_poll_cursor", cursor


def upgrade() -> None:
    bind = op.get_bind()
    _schema.create_all(bind)
    moved = sa.or_(meta.c.key.like("github:%"), meta.c.key.like("slack.rollout:%"))
    stored = bind.execute(sa.select(meta.c.key, meta.c.value, meta.c.updated_at).where(moved))
    entries = {str(key): (str(value), updated) for key, value, updated in stored}
    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for table, row in _rows(entries):
        key = tuple(row[column.name] for column in _schema.tables[table].primary_key.columns)
        rows.setdefault(table, {})[key] = row  # one row per key, however the old keys spelt it
    for table, found in rows.items():
        op.bulk_insert(_schema.tables[table], list(found.values()))
    bind.execute(sa.delete(meta).where(moved))


# ----------------------------------------------------------------- downgrade


def downgrade() -> None:
    bind = op.get_bind()
    back: dict[str, tuple[str, datetime | None]] = {}  # key -> (value, when it was written, when known)

    def read(name: str) -> list[sa.RowMapping]:
        table = _schema.tables[name]
        return list(bind.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings())

    recorded: dict[int, datetime] = {}
    open_pulls: dict[str, bool] = {}
    for row in read("pull_requests"):
        pull = {name: row[name] for name in _PULL_FIELDS}
        recorded[row["number"]] = row["recorded_at"]
        back[f"github:pr:{row['number']}"] = json.dumps(pull, sort_keys=True), row["recorded_at"]
        if row["state"] == "open":
            open_pulls[str(row["number"])] = bool(row["fork"])
    if recorded:
        back["github:open-pulls"] = json.dumps(open_pulls), max(recorded.values(), key=_utc)
    for row in read("pull_request_branches"):
        back[f"github:branch:{row['branch']}"] = str(row["number"]), recorded.get(row["number"])
    for row in read("ok_to_test"):
        back[f"github:ok-to-test:{row['number']}"] = row["sha"], row["granted_at"]
    for row in read("handled_comments"):
        back[f"github:comment-handled:{row['comment_id']}"] = row["delivery_id"], row["handled_at"]
    for table, key in (
        ("github_check_runs", "github:check:{repository}:{commit}:{model}"),
        ("github_report_comments", "github:comment:{repository}:{number}:{model}"),
        ("github_reply_comments", "github:reply:{repository}:{in_reply_to}"),
        ("github_branch_pulls", "github:sender:pr:{repository}:{branch}"),
    ):
        for row in read(table):
            back[key.format(**row)] = str(row["github_id"]), row["updated_at"]
    for row in read("github_poll_cursor"):
        for name, key in (("listening_since", "listening-since"), ("comments_since", "comments-since")):
            back[f"github:poll:{key}"] = _utc(row[name]).strftime(_POLL_TIME), row[name]
    for row in read("slack_messages"):
        state = {**row["view"], **{name: row[name] for name in _SLACK_REFERENCE}}
        back[f"slack.rollout:{row['model']}:v{row['version']}"] = (
            json.dumps(state, sort_keys=True),
            row["updated_at"],
        )
    timed = [
        {"key": k, "value": v, "updated_at": _stamp(at)} for k, (v, at) in back.items() if at is not None
    ]
    untimed = [{"key": k, "value": v} for k, (v, at) in back.items() if at is None]
    if timed:
        op.bulk_insert(meta, timed)
    if untimed:
        bind.execute(
            sa.insert(meta).values(updated_at=sa.func.current_timestamp()), untimed
        )  # the database's clock
    _schema.drop_all(bind)

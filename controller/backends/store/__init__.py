"""The durable state store: what Flywheel remembers between restarts, one narrow protocol per record kind.

The engine, the webhook service and the CLI keep here everything that must
survive a crash. Each kind of record has its own module holding its frozen
record types and its :class:`~typing.Protocol`, and each part of Flywheel
takes only the protocols it uses:

* :class:`Inbox`: events from webhooks, the poller, timers and Slack;
* :class:`RunRecords`: pipeline runs, their steps, and the run cache;
* :class:`Registry`: immutable, numbered model versions;
* :class:`RolloutRecords`: rollouts (compare-and-set) and the serving history;
* :class:`ApprovalRecords`: decisions on a version for an environment;
* :class:`AuditLog`: the append-only audit log;
* :class:`Outbox`: messages to GitHub and Slack, kept until sent;
* :class:`ReviewRecords`: the local forge's reports and commit statuses;
* :class:`PullRequestRecords`: GitHub's pull requests, ok-to-test, handled comments, ids;
* :class:`SlackRecords`: where each rollout's Slack message is, and what it shows;
* :class:`Transactions`: all-or-nothing groups of calls, a health check, closing;
* :class:`Meta`: controller-wide settings (never a record of one object);
* :class:`StateIntegrity`: proof that the store may be acted on (writable,
  intact, its audit log not behind the high-water mark kept beside it), and
  the write-ahead log's checkpoint; see :mod:`.integrity`.

There is one implementation of all of them,
:class:`controller.backends.store.sql.SqlStore` (SQLAlchemy Core; SQLite in
WAL mode on the embedded home, PostgreSQL on the cluster home), which
:func:`open_store` builds; the composition root (:mod:`controller.app`) holds
it and hands each part the protocols it needs. A part that uses several kinds
takes each as a parameter of its own (the rollout engine), or declares one
small Protocol naming just the methods it calls when they must share a
transaction, so come from one store (the judge of runs, the operator
commands). Long keyword signatures are TypedDicts (:class:`NewRun`,
:class:`NewAuditEntry`, ...), so that such a Protocol restates a method in
one line. It doubles as the fake: tests
open a store on a temporary directory (or ``open_store("sqlite://")`` for a
single-threaded in-memory one), which behaves exactly like production,
constraints and all. The conventions every kind follows (aware UTC times,
the store's clock, keyword-only arguments, atomic methods, JSON detail) are
in :mod:`controller.backends.store.common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from controller.backends.store.approvals import (
    Approval,
    ApprovalChannel,
    ApprovalRecords,
    Decision,
    NewApproval,
)
from controller.backends.store.audit import AuditEntry, AuditLog, AuditReads, NewAuditEntry
from controller.backends.store.common import (
    Conflict,
    JSONObject,
    NotFound,
    SchemaTooNew,
    StoreError,
    StoreUnreachable,
)
from controller.backends.store.inbox import Inbox, InboxEvent, NewEvent
from controller.backends.store.integrity import StateIntegrity, StateRefused
from controller.backends.store.outbox import DestinationPause, Outbox, OutboxMessage
from controller.backends.store.pull_requests import (
    BranchPullRef,
    CheckRunRef,
    GitHubRef,
    OkToTest,
    PollCursor,
    PullRequest,
    PullRequestRecords,
    ReplyCommentRef,
    ReportCommentRef,
    pull_ref_number,
)
from controller.backends.store.registry import (
    ModelPage,
    ModelQuery,
    ModelSort,
    ModelSummary,
    ModelVersion,
    NewVersion,
    Registry,
)
from controller.backends.store.reviews import CommitStatus, Review, ReviewRecords, ReviewState, ReviewUpdate
from controller.backends.store.rollouts import (
    NewRollout,
    RolloutChanges,
    RolloutRecord,
    RolloutRecords,
    ServingRecord,
)
from controller.backends.store.runs import (
    TERMINAL_RUN_STATUSES,
    NewRun,
    Run,
    RunChanges,
    RunQuery,
    RunRecords,
    RunStatus,
    StepResult,
)
from controller.backends.store.slack import SlackMessage, SlackRecords
from controller.backends.store.transactions import Meta, Transactions
from controller.clock import Clock

if TYPE_CHECKING:
    from controller.backends.store.sql import SqlStore

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_DB_NAME",
    "TERMINAL_RUN_STATUSES",
    "Approval",
    "ApprovalChannel",
    "ApprovalRecords",
    "AuditEntry",
    "AuditLog",
    "AuditReads",
    "BranchPullRef",
    "CheckRunRef",
    "CommitStatus",
    "Conflict",
    "Decision",
    "DestinationPause",
    "GitHubRef",
    "Inbox",
    "InboxEvent",
    "JSONObject",
    "Meta",
    "ModelPage",
    "ModelQuery",
    "ModelSort",
    "ModelSummary",
    "ModelVersion",
    "NewApproval",
    "NewAuditEntry",
    "NewEvent",
    "NewRollout",
    "NewRun",
    "NewVersion",
    "NotFound",
    "OkToTest",
    "Outbox",
    "OutboxMessage",
    "PollCursor",
    "PullRequest",
    "PullRequestRecords",
    "Registry",
    "ReplyCommentRef",
    "ReportCommentRef",
    "Review",
    "ReviewRecords",
    "ReviewState",
    "ReviewUpdate",
    "RolloutChanges",
    "RolloutRecord",
    "RolloutRecords",
    "Run",
    "RunChanges",
    "RunQuery",
    "RunRecords",
    "RunStatus",
    "SchemaTooNew",
    "ServingRecord",
    "SlackMessage",
    "SlackRecords",
    "StateIntegrity",
    "StateRefused",
    "StepResult",
    "StoreError",
    "StoreUnreachable",
    "Transactions",
    "open_store",
    "pull_ref_number",
    "state_url",
]

DEFAULT_STATE_DIR = ".flywheel"
STATE_DB_NAME = "state.db"


def state_url(location: str | Path | None = None) -> str:
    """The database URL for ``location``: ``None`` → ``./.flywheel/state.db``, ``<dir>`` → ``<dir>/state.db``.

    A string with ``://`` is taken as an SQLAlchemy URL as it is. Directories
    are created as needed.
    """
    if isinstance(location, str) and "://" in location:
        return location
    directory = Path.cwd() / DEFAULT_STATE_DIR if location is None else Path(location)
    if directory.suffix == ".db" and not directory.is_dir():
        path = directory  # a database file named directly
    else:
        path = directory / STATE_DB_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_store(location: str | Path | None, *, clock: Clock) -> SqlStore:
    """Open (creating and migrating as needed) the store at ``location``; see :func:`state_url`.

    ``clock`` stamps every "now" the store records (received, created, due, sent). The audit
    log's high-water mark is kept beside an SQLite database (``state.db.audit-mark``); opening
    checks nothing of it: a part about to act calls
    :func:`~controller.backends.store.integrity.verify_state` first.
    """
    from controller.backends.store.sql import SqlStore

    return SqlStore(state_url(location), clock=clock)

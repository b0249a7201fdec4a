"""Typed views of the GitHub webhook payloads Flywheel reads.

Only the fields the engine uses are declared; GitHub sends many more, and
they are kept in the stored payload untouched. These are ``TypedDict``s over
the raw JSON, so a consumer that reads the inbox can ``cast`` the payload of
an event of kind ``pull_request.*``, ``push``, ``issue_comment.*`` or
``ping`` to the matching type. The receiver checks no more than that the
body is a JSON object with a string ``action`` when one is present; consumers
still have to cope with a field being absent or ``None`` where marked so.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

__all__ = [
    "Comment",
    "Commit",
    "CommitAuthor",
    "GitRef",
    "Hook",
    "Issue",
    "IssueCommentEvent",
    "PingEvent",
    "PullRequest",
    "PullRequestEvent",
    "PushEvent",
    "Repository",
    "User",
]


class User(TypedDict):
    login: str
    id: int
    type: NotRequired[str]  # User | Bot | Organization


class Repository(TypedDict):
    id: int
    name: str
    full_name: str
    private: bool
    default_branch: NotRequired[str]
    clone_url: NotRequired[str]
    html_url: NotRequired[str]
    owner: NotRequired[User]


class GitRef(TypedDict):
    """One side of a pull request: ``head`` (the proposal) or ``base`` (where it merges)."""

    label: str
    ref: str
    sha: str
    user: User | None
    repo: Repository | None  # None when a fork was deleted


class PullRequest(TypedDict):
    number: int
    state: str  # open | closed
    title: str
    body: str | None
    draft: NotRequired[bool]
    merged: NotRequired[bool | None]
    merge_commit_sha: NotRequired[str | None]
    html_url: str
    user: User
    author_association: str  # OWNER | MEMBER | COLLABORATOR | CONTRIBUTOR | NONE | ...
    head: GitRef
    base: GitRef


class PullRequestEvent(TypedDict):
    """Event ``pull_request``; kinds ``pull_request.opened``, ``.synchronize``, ``.closed``, ..."""

    action: str
    number: int
    pull_request: PullRequest
    repository: Repository
    sender: User
    before: NotRequired[str]  # synchronize
    after: NotRequired[str]  # synchronize


class CommitAuthor(TypedDict):
    name: str
    email: str | None
    username: NotRequired[str]


class Commit(TypedDict):
    id: str
    message: str
    timestamp: str
    author: CommitAuthor
    added: NotRequired[list[str]]
    removed: NotRequired[list[str]]
    modified: NotRequired[list[str]]


class PushEvent(TypedDict):
    """Event ``push`` (no action); kind ``push``."""

    ref: str  # refs/heads/main
    before: str
    after: str
    created: bool
    deleted: bool
    forced: bool
    commits: list[Commit]
    head_commit: Commit | None
    repository: Repository
    pusher: CommitAuthor
    sender: User


class Issue(TypedDict):
    number: int
    title: str
    state: str
    user: User
    pull_request: NotRequired[dict[str, str | None]]  # present when the issue is a pull request


class Comment(TypedDict):
    id: int
    body: str
    user: User
    author_association: str
    created_at: str
    html_url: str


class IssueCommentEvent(TypedDict):
    """Event ``issue_comment``; kinds ``issue_comment.created``, ``.edited``, ``.deleted``."""

    action: str
    issue: Issue
    comment: Comment
    repository: Repository
    sender: User


class Hook(TypedDict):
    id: int
    type: str
    events: list[str]
    active: bool


class PingEvent(TypedDict):
    """Event ``ping``, sent when a webhook is created; kind ``ping``."""

    zen: str
    hook_id: int
    hook: Hook
    repository: NotRequired[Repository]
    sender: NotRequired[User]

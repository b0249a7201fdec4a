"""GitHub's webhook payloads as Flywheel reads them: strict models, checked at the door and when handled.

The webhook receiver (:func:`webhooks.github.parse_delivery`) validates the
payload of every handled event with :func:`validate_payload` before it is
stored, and answers 400 with the first mismatch when it does not fit; the
engine's inbox consumer (:mod:`controller.engine.github_events`) checks again
before handling, so an event stored before these checks existed, or queued
by the poller, is held to the same shape. The models live here, beside the
forge, so that both can read them without the engine importing the webhook
service. Only the fields Flywheel reads are declared, with the types and the
required-ness of GitHub's published payload schemas
(``@octokit/webhooks-schemas``; ``tests/test_webhooks_payloads.py`` holds the
models against them and against GitHub's real payloads); GitHub sends many
more, which are ignored here and kept in the stored payload untouched.

Why pydantic v2 models in strict mode, not a library's full payload models:
strict mode takes JSON's types as they are (``false`` is not a number,
``"1"`` is not an integer, ``1.0`` is not an id), where githubkit's webhook
models validate in pydantic's lax mode and would take ``"number": false`` as
pull request 0, which is the poison this module exists to keep out. Full
models would also refuse the smaller payloads the poller queues in the
webhook's shape (:mod:`controller.backends.forge.github_poll`) and make
every field GitHub adds or drops a reason to refuse a delivery whose parts
Flywheel uses are fine. Integers are bounded to what the store can hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "GITHUB_ID_MAX",
    "GITHUB_SOURCE",
    "HANDLED_EVENTS",
    "Account",
    "BaseRef",
    "ClosedPullRequest",
    "Comment",
    "DraftPullRequest",
    "HeadRef",
    "Issue",
    "IssueCommentEvent",
    "OpenedPullRequest",
    "PayloadError",
    "PingEvent",
    "PullRequest",
    "PullRequestClosed",
    "PullRequestConvertedToDraft",
    "PullRequestEvent",
    "PullRequestOpened",
    "PullRequestReopened",
    "PushEvent",
    "ReopenedPullRequest",
    "RepositoryId",
    "RepositoryName",
    "Sender",
    "describe_error",
    "payload_model",
    "validate_payload",
]

GITHUB_SOURCE = "github"  # the inbox source of GitHub's events, delivered by webhook or found by polling
GITHUB_ID_MAX = 2**63 - 1  # a signed 64-bit integer: what SQLite and PostgreSQL's BIGINT hold

GitHubId = Annotated[int, Field(ge=0, le=GITHUB_ID_MAX)]


class PayloadError(ValueError):
    """A payload that does not have the shape Flywheel reads; the message says where, in one line."""


class _Model(BaseModel):
    """Strict (JSON's types as given), immutable, and blind to the fields it does not declare."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Account(_Model):
    """A user that Flywheel knows by login: the author of a pull request."""

    login: str


class Sender(_Model):
    """A user whose kind matters too: comments from bots (``type: Bot``, ``*[bot]``) are ignored."""

    login: str
    type: str  # User | Bot | Organization (more may come)


class RepositoryId(_Model):
    id: GitHubId


class RepositoryName(_Model):
    full_name: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]  # owner/name


class HeadRef(_Model):
    """The proposal's side of a pull request; ``repo`` is ``null`` when its fork was deleted."""

    ref: str
    sha: str
    repo: RepositoryId | None


class BaseRef(_Model):
    """Where a pull request merges."""

    ref: str
    repo: RepositoryId


class PullRequest(_Model):
    number: GitHubId
    state: Literal["open", "closed"]
    merged: bool | None
    merged_at: str | None
    updated_at: str
    user: Account
    head: HeadRef
    base: BaseRef


# What GitHub's schemas fix for some actions, on the fields Flywheel reads.
class OpenedPullRequest(PullRequest):
    """``opened``: open and not merged."""

    state: Literal["open"]
    merged_at: None


class ReopenedPullRequest(PullRequest):
    """``reopened`` and ``ready_for_review``: open, not merged, and ``merged`` known."""

    state: Literal["open"]
    merged: bool
    merged_at: None


class DraftPullRequest(PullRequest):
    """``converted_to_draft``: not merged."""

    merged: bool
    merged_at: None

    @field_validator("merged")
    @classmethod
    def _not_merged(cls, merged: bool) -> bool:
        if merged:
            raise ValueError("a draft is not merged")
        return merged


class ClosedPullRequest(PullRequest):
    """``closed``: closed, merged or not."""

    state: Literal["closed"]
    merged: bool


class PullRequestEvent(_Model):
    """Event ``pull_request``, every action: kinds ``pull_request.opened``, ``.synchronize``, ..."""

    action: str
    number: GitHubId
    pull_request: PullRequest

    @model_validator(mode="after")
    def _one_number(self) -> PullRequestEvent:
        if self.number != self.pull_request.number:
            raise ValueError("number and pull_request.number differ")
        return self


class PullRequestOpened(PullRequestEvent):
    pull_request: OpenedPullRequest


class PullRequestReopened(PullRequestEvent):
    pull_request: ReopenedPullRequest


class PullRequestConvertedToDraft(PullRequestEvent):
    pull_request: DraftPullRequest


class PullRequestClosed(PullRequestEvent):
    pull_request: ClosedPullRequest


class PushEvent(_Model):
    """Event ``push`` (no action); a tag or a deleted branch starts nothing.

    ``deleted`` is always sent by GitHub; absent, it is taken as ``false``.
    """

    ref: str
    deleted: bool = False


class PullRequestLink(_Model):
    """Present on an issue that is a pull request; Flywheel reads only that it is there."""


class Issue(_Model):
    number: GitHubId
    pull_request: PullRequestLink | None = None

    @field_validator("pull_request", mode="before")
    @classmethod
    def _absent_not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("is null; leave it out for an issue that is not a pull request")
        return value


class Comment(_Model):
    id: GitHubId
    body: str
    user: Sender
    html_url: str


class IssueCommentEvent(_Model):
    """Event ``issue_comment``: kinds ``issue_comment.created``, ``.edited``, ``.deleted``."""

    action: str
    issue: Issue
    comment: Comment
    sender: Sender
    repository: RepositoryName


class PingEvent(_Model):
    """Event ``ping``, sent when a webhook is created; kind ``ping``."""

    zen: str
    hook_id: GitHubId


_MODELS: dict[str, type[_Model]] = {
    "pull_request": PullRequestEvent,
    "push": PushEvent,
    "issue_comment": IssueCommentEvent,
    "ping": PingEvent,
}
HANDLED_EVENTS: frozenset[str] = frozenset(_MODELS)  # the X-GitHub-Event names Flywheel stores and handles
_PULL_REQUEST_ACTIONS: dict[str, type[_Model]] = {
    "opened": PullRequestOpened,
    "reopened": PullRequestReopened,
    "ready_for_review": PullRequestReopened,
    "converted_to_draft": PullRequestConvertedToDraft,
    "closed": PullRequestClosed,
}


def payload_model(event: str, action: object = None) -> type[_Model] | None:
    """The model of the payload of ``event`` (with ``action``); ``None`` for an event Flywheel ignores."""
    if event == "pull_request" and isinstance(action, str) and action in _PULL_REQUEST_ACTIONS:
        return _PULL_REQUEST_ACTIONS[action]
    return _MODELS.get(event)


def describe_error(error: ValidationError) -> str:
    """The first mismatch of ``error`` in one short line: where, and what was wrong (no input echoed)."""
    errors = error.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"


def validate_payload(event: str, payload: Mapping[str, Any]) -> _Model | None:
    """``payload`` as the model of ``event``; ``None`` for an unhandled event; raise :class:`PayloadError`."""
    model = payload_model(event, payload.get("action"))
    if model is None:
        return None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"the {event} payload does not fit: {describe_error(exc)}") from None

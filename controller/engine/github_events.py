"""GitHub's events from the inbox: pull requests, pushes, comment commands and pings.

The inbox consumer (:class:`controller.engine.inbox.InboxDispatcher`) hands
every event of a kind in :data:`GITHUB_EVENT_KINDS` to a
:class:`GitHubEvents`, whether the webhook service stored it or the poller
(:mod:`controller.backends.forge.github_poll`) queued it in the webhook's
shape. Each call returns the refs to reconcile at once (only those: a
delivery never makes the controller rescan every branch):

* ``pull_request``: the pull request is recorded for the trust gate and for
  the review targets that carry its number
  (:func:`controller.engine.trust.record_pull_request`); ``opened``,
  ``synchronize``, ``reopened`` and ``closed`` name the proposal's ref (and
  the base branch after a merge);
* ``push``: the pushed branch (the default branch after a merge); a tag or a
  deleted branch names nothing;
* ``issue_comment`` ``created`` by a person (bots and edits are ignored): the
  ``/flywheel`` commands in it run there and then
  (:func:`controller.engine.comments.handle_comment`; a ``retrain`` starts its
  run), once per comment even when both its webhook and the poller bring it;
  an ``ok-to-test`` names the pull request's ref;
* ``ping``: nothing to do.

Every payload is checked against its model
(:func:`controller.backends.forge.payloads.validate_payload`) before it is
handled, as the webhook service checks it at the door, so an event stored
before those checks existed, or queued by the poller, is held to the same
shape: one that does not fit raises with the mismatch and records nothing
(the dispatcher records the error on the event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.backends.forge.payloads import validate_payload
from controller.backends.store import InboxEvent, PullRequest, PullRequestRecords
from controller.engine.commands import Commands
from controller.engine.comments import CommentRecords, CommentReplies, Retrain, handle_comment
from controller.engine.trust import record_pull_request
from controller.specs.types import Catalog

__all__ = ["GITHUB_EVENT_KINDS", "GitHubEvents", "RepliesFor"]

log = logging.getLogger("flywheel.github.events")

RECONCILE_ACTIONS = frozenset({"opened", "synchronize", "reopened", "closed"})
_PULL_REQUEST_ACTIONS = (
    "opened", "synchronize", "reopened", "closed", "edited", "assigned", "unassigned", "labeled",
    "unlabeled", "converted_to_draft", "ready_for_review", "locked", "unlocked", "review_requested",
    "review_request_removed", "auto_merge_enabled", "auto_merge_disabled", "milestoned",
    "demilestoned", "enqueued", "dequeued",
)  # fmt: skip
# The inbox kinds ("<event>.<action>", or "<event>" without an action) of the GitHub events handled here.
GITHUB_EVENT_KINDS: tuple[str, ...] = (
    *(f"pull_request.{action}" for action in _PULL_REQUEST_ACTIONS),
    "push",
    "issue_comment.created",
    "issue_comment.edited",
    "issue_comment.deleted",
    "ping",
)

RepliesFor = Callable[[str], CommentReplies]
"""Where the answers to a comment in a repository (``owner/name``) go: the GitHub forge of that repository."""


@dataclass(frozen=True, kw_only=True, eq=False)
class GitHubEvents:
    """Handles one GitHub event (see the module docstring); returns the refs to reconcile now.

    ``catalog`` returns main's catalog, under whose policy the commands run;
    ``replies`` gives the forge that answers comments in a repository;
    ``retrain`` starts a run again; ``changed_models`` (optional) names the
    models a pull request changes, for commands that leave the model out.
    """

    pulls: PullRequestRecords
    records: CommentRecords
    catalog: Callable[[], Catalog]
    commands: Commands
    replies: RepliesFor
    retrain: Retrain
    changed_models: Callable[[PullRequest], Sequence[str]] | None = None

    def __call__(self, event: InboxEvent) -> set[str]:
        """Handle ``event``; raises :class:`~controller.backends.forge.payloads.PayloadError` for a misfit."""
        name = event.kind.split(".", 1)[0]
        payload = event.payload
        validate_payload(name, payload)
        action = payload.get("action")
        if name == "pull_request":
            return self._pull_request(payload, action)
        if name == "push":
            return _push(payload)
        if name == "issue_comment":
            return self._comment(event, action)
        if name == "ping":
            log.info("GitHub ping for hook %s: %s", payload.get("hook_id"), payload.get("zen"))
        return set()

    def _pull_request(self, payload: Mapping[str, Any], action: object) -> set[str]:
        info = record_pull_request(self.pulls, payload)
        if info is None:
            raise ValueError("pull_request event without a well-formed pull_request")
        if action not in RECONCILE_ACTIONS:
            return set()
        refs = {info.ref}
        if action == "closed" and info.merged and info.base_ref:
            refs.add(info.base_ref)
        return refs

    def _comment(self, event: InboxEvent, action: object) -> set[str]:
        payload = event.payload
        if action != "created" or _by_bot(payload):
            return set()
        comment = payload.get("comment")
        comment_id = comment.get("id") if isinstance(comment, Mapping) else None
        handled = comment_id if isinstance(comment_id, int) else None
        if handled is not None and self.pulls.comment_handled(handled):
            log.info("comment %s was handled already (delivered by webhook and found by polling)", comment_id)
            return set()
        outcome = handle_comment(
            payload,
            pulls=self.pulls,
            records=self.records,
            catalog=self.catalog,
            commands=self.commands,
            forge=self.replies(_repository(payload)),
            retrain=self.retrain,
            changed_models=self.changed_models,
        )
        if handled is not None:
            self.pulls.mark_comment_handled(handled, delivery_id=event.delivery_id)
        return set(outcome.refs)


def _push(payload: Mapping[str, Any]) -> set[str]:
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref.startswith("refs/heads/") or payload.get("deleted"):
        return set()  # tags and deleted branches start nothing
    return {ref.removeprefix("refs/heads/")}


def _by_bot(payload: Mapping[str, Any]) -> bool:
    for part in ("comment", "sender"):
        value = payload.get(part)
        user = value.get("user") if part == "comment" and isinstance(value, Mapping) else value
        if isinstance(user, Mapping) and (
            user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")
        ):
            return True
    return False


def _repository(payload: Mapping[str, Any]) -> str:
    repository = payload.get("repository")
    name = repository.get("full_name") if isinstance(repository, Mapping) else None
    if not isinstance(name, str):
        raise ValueError("event without repository.full_name")
    return name

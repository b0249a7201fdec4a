"""Handling GitHub events from the inbox: pull requests, pushes, comment commands and pings.

The receiver (:mod:`webhooks.app`) only verifies deliveries and writes them to
the inbox; the controller's loop calls :func:`process_github_events`, which
claims inbox events and handles the GitHub webhook ones:

* ``pull_request``: the pull request's metadata is recorded for the trust
  gate and the forge (:func:`controller.engine.trust.record_pull_request`);
  ``opened``, ``synchronize``, ``reopened`` and ``closed`` return the
  proposal's ref to reconcile (and the base branch after a merge);
* ``push``: returns the pushed branch (the default branch after a merge);
* ``issue_comment`` ``created`` by a person (bots and edits are ignored): the
  ``/flywheel`` commands in it (:func:`controller.engine.comments.handle_comment`),
  once per comment even when both its webhook and the poller
  (:mod:`controller.backends.forge.github_poll`) bring it; an ``ok-to-test``
  returns the pull request's ref;
* ``ping``: nothing to do.

Every payload is checked against its model (:mod:`controller.backends.forge.payloads`) before
it is handled, as the receiver checks it at the door, so an event stored
before those checks existed, or queued by the poller, is held to the same
shape: one that does not fit fails with the mismatch and records nothing.
Each handled event is completed; an error is recorded on the event and
logged, never raised, so one bad event cannot stop the loop. Other events
(``retrain`` and ``rollback`` requests, Slack actions, timers) are passed to
``other`` when given; without it they are left claimed, and their lease
expires so that their own consumer gets them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from controller.backends.forge.github import GitHubForge
from controller.backends.forge.payloads import validate_payload
from controller.backends.store import InboxEvent, PullRequest, Store
from controller.engine.commands import Commands
from controller.engine.comments import handle_comment
from controller.engine.trust import record_pull_request
from controller.specs.types import Catalog
from webhooks.github import HANDLED_EVENTS

if TYPE_CHECKING:
    from controller.app import Controller

__all__ = [
    "GITHUB_EVENT_KINDS",
    "GitHubEventHandler",
    "attach_github_events",
    "handle_github_event",
    "is_github_webhook",
    "process_github_events",
]

log = logging.getLogger("flywheel.webhooks.events")

SOURCE = "github"
RECONCILE_ACTIONS = frozenset({"opened", "synchronize", "reopened", "closed"})
_PULL_REQUEST_ACTIONS = (
    "opened", "synchronize", "reopened", "closed", "edited", "assigned", "unassigned", "labeled",
    "unlabeled", "converted_to_draft", "ready_for_review", "locked", "unlocked", "review_requested",
    "review_request_removed", "auto_merge_enabled", "auto_merge_disabled", "milestoned",
    "demilestoned", "enqueued", "dequeued",
)  # fmt: skip
# Inbox kinds ("<event>.<action>") of the GitHub deliveries handled here, for a dispatcher keyed by kind.
GITHUB_EVENT_KINDS: tuple[str, ...] = (
    *(f"pull_request.{action}" for action in _PULL_REQUEST_ACTIONS),
    "push",
    "issue_comment.created",
    "issue_comment.edited",
    "issue_comment.deleted",
    "ping",
)


def is_github_webhook(event: InboxEvent) -> bool:
    """Whether ``event`` is a webhook delivery this module handles (not a request queued by a command)."""
    return event.source == SOURCE and event.kind.split(".", 1)[0] in HANDLED_EVENTS


def process_github_events(
    store: Store,
    *,
    catalog: Callable[[], Catalog],
    commands: Commands,
    limit: int = 50,
    forge: GitHubForge | None = None,
    changed_models: Callable[[PullRequest], Sequence[str]] | None = None,
    other: Callable[[InboxEvent], set[str] | None] | None = None,
    worker: str | None = None,
) -> set[str]:
    """Claim up to ``limit`` inbox events, handle the GitHub ones; return the refs to reconcile.

    ``catalog`` returns main's catalog. ``forge`` queues replies to comment
    commands (by default, a forge for the event's repository).
    """
    refs: set[str] = set()
    claimed = store.claim_events(limit=limit, worker=worker or f"github-events-{os.getpid()}")
    for event in claimed:
        if not is_github_webhook(event):
            if other is not None:
                refs |= other(event) or set()
            else:
                log.warning("inbox event %s (%s/%s) has no handler here", event.id, event.source, event.kind)
            continue
        try:
            refs |= handle_github_event(
                store,
                event,
                catalog=catalog,
                commands=commands,
                forge=forge,
                changed_models=changed_models,
            )
        except Exception as exc:
            log.exception("GitHub event %s (%s) failed", event.id, event.kind)
            _complete(store, event, error=f"{type(exc).__name__}: {exc}")
        else:
            _complete(store, event, error=None)
    return refs


class GitHubEventHandler:
    """One handler for every kind in :data:`GITHUB_EVENT_KINDS` of a dispatcher that completes events.

    The refs to reconcile accumulate until :meth:`take_refs`.
    """

    def __init__(
        self,
        store: Store,
        *,
        catalog: Callable[[], Catalog],
        commands: Commands,
        forge: GitHubForge | None = None,
        changed_models: Callable[[PullRequest], Sequence[str]] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._commands = commands
        self._forge = forge
        self._changed_models = changed_models
        self._refs: set[str] = set()

    def __call__(self, event: InboxEvent) -> None:
        self._refs |= handle_github_event(
            self._store,
            event,
            catalog=self._catalog,
            commands=self._commands,
            forge=self._forge,
            changed_models=self._changed_models,
        )

    def take_refs(self) -> set[str]:
        refs, self._refs = self._refs, set()
        return refs


def attach_github_events(controller: Controller) -> GitHubEventHandler:
    """Make ``controller`` handle GitHub's events from its inbox: delivered by webhook or found by polling.

    A pull request, push or ok-to-test that names refs makes the controller
    fetch and reconcile at once. Comment commands that leave out the model
    use the models the pull request changes against main.
    """
    proposals = controller.proposals
    assert controller.commands is not None
    handler = GitHubEventHandler(
        controller.store,
        catalog=controller.main_catalog,
        commands=controller.commands,
        forge=controller.forge if isinstance(controller.forge, GitHubForge) else None,
        changed_models=lambda pull: proposals.changed_models(pull.ref),
    )

    def on_github(event: InboxEvent) -> None:
        handler(event)
        if handler.take_refs():
            controller.poll_now.set()

    for kind in GITHUB_EVENT_KINDS:
        controller.handlers[kind] = on_github
    return handler


def handle_github_event(
    store: Store,
    event: InboxEvent,
    *,
    catalog: Callable[[], Catalog],
    commands: Commands,
    forge: GitHubForge | None = None,
    changed_models: Callable[[PullRequest], Sequence[str]] | None = None,
) -> set[str]:
    """Handle one GitHub webhook event (without completing it); return the refs to reconcile.

    Raises :class:`~controller.backends.forge.payloads.PayloadError` for a payload that does not fit.
    """
    name = event.kind.split(".", 1)[0]
    payload = event.payload
    validate_payload(name, payload)
    action = payload.get("action")
    if name == "pull_request":
        return _pull_request(store, payload, action)
    if name == "push":
        return _push(payload)
    if name == "issue_comment":
        if action != "created" or _by_bot(payload):
            return set()
        comment = payload.get("comment")
        comment_id = comment.get("id") if isinstance(comment, Mapping) else None
        handled = comment_id if isinstance(comment_id, int) else None
        if handled is not None and store.comment_handled(handled):
            log.info("comment %s was handled already (delivered by webhook and found by polling)", comment_id)
            return set()
        outcome = handle_comment(
            payload,
            store=store,
            catalog=catalog,
            commands=commands,
            forge=forge or GitHubForge(store, _repository(payload)),
            changed_models=changed_models,
        )
        if handled is not None:
            store.mark_comment_handled(handled, delivery_id=event.delivery_id)
        return set(outcome.refs)
    if name == "ping":
        log.info("GitHub ping for hook %s: %s", payload.get("hook_id"), payload.get("zen"))
    return set()


def _pull_request(store: Store, payload: Mapping[str, Any], action: object) -> set[str]:
    info = record_pull_request(store, payload)
    if info is None:
        raise ValueError("pull_request event without a well-formed pull_request")
    if action not in RECONCILE_ACTIONS:
        return set()
    refs = {info.ref}
    if action == "closed" and info.merged and info.base_ref:
        refs.add(info.base_ref)
    return refs


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


def _complete(store: Store, event: InboxEvent, *, error: str | None) -> None:
    try:
        store.complete_event(event.id, error=error)
    except Exception:
        log.exception("could not complete inbox event %s; it will be claimed again", event.id)

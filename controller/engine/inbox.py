"""The inbox's one consumer: every event handled by the handler of its kind, and completed once.

The controller's loop (:meth:`controller.app.Controller.handle_requests`)
calls :meth:`InboxDispatcher.handle_due`, which claims the inbox's events in
order, hands each to the handler of its kind and completes it, and returns
the refs the handlers asked to reconcile at once. The composition root
(:func:`controller.app.build_controller`) registers the handlers:

* GitHub's ``pull_request.*``, ``push``, ``issue_comment.*`` and ``ping``,
  delivered by webhook or queued by the poller:
  :class:`~controller.engine.github_events.GitHubEvents`;
* ``slack.action``, a press of an Approve or Reject button:
  :class:`~controller.engine.slack_actions.SlackActions`;
* ``rollback``, asked for with no rollout active (queued by
  :class:`~controller.engine.commands.Commands`): the rollout engine;
* ``retrain``, queued by an earlier Flywheel for ``/flywheel retrain`` (a
  comment now starts its run itself; such an event left in a state
  directory still runs).

An event whose handler raises is completed with the error, logged and
skipped; so is an event of a kind with no handler. One claimed more than
:data:`MAX_EVENT_ATTEMPTS` times without being completed (the controller
stopped while handling it each time) is given up without being handled
again. Nothing is raised: one bad event never stops the loop, and every
event is completed once. A handler may complete its event itself, in the
transaction that records what it did (a Slack press does, so that a crash
cannot decide it twice); completing it again here only stamps the time
again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

from controller.backends.store import Inbox, InboxEvent

__all__ = ["MAX_EVENT_ATTEMPTS", "Handler", "InboxDispatcher"]

log = logging.getLogger("flywheel.inbox")

MAX_EVENT_ATTEMPTS = 5  # an inbox event claimed more often than this without completing is given up

Handler = Callable[[InboxEvent], Collection[str] | None]
"""Handles one event; returns the refs to reconcile at once (or nothing). Raises when it cannot."""


class InboxDispatcher:
    """Claims the inbox's events and hands each to ``handlers[event.kind]`` (see the module docstring)."""

    def __init__(
        self,
        inbox: Inbox,
        handlers: Mapping[str, Handler] | None = None,
        *,
        worker: str = "controller",
        lease_seconds: float = 120.0,
    ) -> None:
        self.inbox = inbox
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.worker = worker
        self.lease_seconds = lease_seconds

    def handle_due(self, *, limit: int = 50) -> set[str]:
        """Handle up to ``limit`` claimable events in order; the refs their handlers asked to reconcile."""
        refs: set[str] = set()
        claimed = self.inbox.claim_events(limit=limit, worker=self.worker, lease_seconds=self.lease_seconds)
        for event in claimed:
            refs |= self.handle(event)
        return refs

    def handle(self, event: InboxEvent) -> set[str]:
        """Handle one claimed event and complete it, with the error when it fails; never raises."""
        handler = self.handlers.get(event.kind)
        refs: set[str] = set()
        error: str | None = None
        if handler is None:
            error = f"no handler for {event.source} event {event.kind!r}"
        elif event.attempts > MAX_EVENT_ATTEMPTS:
            error = f"given up: claimed {event.attempts} times and never completed"
            log.error("%s event %s (%s) %s", event.source, event.id, event.kind, error)
        else:
            try:
                refs = set(handler(event) or ())
            except Exception as exc:
                log.exception("%s event %s (%s) failed", event.source, event.id, event.kind)
                error = f"{type(exc).__name__}: {exc}"
        try:
            self.inbox.complete_event(event.id, error=error)
        except Exception:
            log.exception("could not complete event %s; it will be claimed again", event.id)
        return refs

"""Deciding a press of a rollout message's Approve or Reject button, which the webhook service queued.

The webhook service (:mod:`webhooks.slack`) verifies Slack's request, writes
the press to the inbox (deduplicated by the request's digest, so a replay is
dropped at the door) and answers Slack at once. The inbox consumer
(:class:`controller.engine.inbox.InboxDispatcher`) hands each event of kind
:data:`~controller.backends.notify.buttons.SLACK_ACTION_KIND` to a
:class:`SlackActions`, which decides it as every other channel does:
:meth:`Commands.decide <controller.engine.commands.Commands.decide>` for the
Slack user, under main's policy, audited whether recorded or refused. A
recorded decision queues a ``decision`` message for the Slack sender, which
shows who approved on the rollout's message; a refusal queues an ephemeral
reply to the presser through Slack's ``response_url`` (the sender posts only
to Slack's own host). A second click is a second event, and the decision it
repeats is recorded once.

The decision, what Slack should show and the event's completion are one
store transaction, so a crash leaves all of them or none: the press is
decided, and a refusal audited, once.
"""

from __future__ import annotations

import logging

from controller.backends.delivery import rollout_thread
from controller.backends.notify.buttons import (
    SLACK_SOURCE,
    ButtonPress,
    decision_message,
    ephemeral_message,
)
from controller.backends.store import Inbox, InboxEvent, Outbox, Transactions
from controller.engine.commands import Actor, Commands

__all__ = ["SlackActions"]

log = logging.getLogger("flywheel.slack.actions")


class SlackActions:
    """Decides the button press an inbox event holds (see the module docstring)."""

    def __init__(
        self, *, commands: Commands, outbox: Outbox, inbox: Inbox, transactions: Transactions
    ) -> None:
        self._commands = commands
        self._outbox = outbox
        self._inbox = inbox
        self._transactions = transactions

    def __call__(self, event: InboxEvent) -> None:
        if event.payload.get("handled") is True:
            return  # decided when it arrived, by a Flywheel that decided presses in the webhook service
        press = ButtonPress.from_payload(event.payload)
        with self._transactions.transaction():
            outcome = self._commands.decide(
                Actor("slack", press.user_id),
                decision=press.decision,
                model=press.model,
                version=press.version,
                environment=press.environment,
                comment="from a Slack button",
            )
            if outcome.duplicate:
                pass  # Slack retried, or the button was clicked twice: recorded once already
            elif outcome.ok:
                self._queue_decision(press, user=outcome.user or press.user_id, message=outcome.message)
            elif press.response_url:
                text = f"Your {press.decision} of {press.model} v{press.version} was not recorded: "
                self._outbox.enqueue(
                    destination=SLACK_SOURCE,
                    key=f"slack:ephemeral:{event.delivery_id}",
                    payload=ephemeral_message(press.response_url, text + outcome.message),
                    replace=False,
                )
            self._inbox.complete_event(event.id)
        log.info(
            "Slack %s of %s v%s by %s: %s",
            press.decision,
            press.model,
            press.version,
            press.user_id,
            "already recorded" if outcome.duplicate else "recorded" if outcome.ok else "refused",
        )

    def _queue_decision(self, press: ButtonPress, *, user: str, message: str) -> None:
        environment = press.environment or ""
        self._outbox.enqueue(
            destination=SLACK_SOURCE,
            key=f"slack:decision:{press.model}:v{press.version}:{environment}:{user}:{press.decision}",
            payload=decision_message(press, user=user, message=message),
            replace=False,
            ordering_key=rollout_thread(SLACK_SOURCE, model=press.model, version=press.version),
        )

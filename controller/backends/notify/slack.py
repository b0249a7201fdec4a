"""Slack: one message per model-version rollout, edited in place, with a thread reply per event.

The controller registers :class:`SlackSender` as the outbox sender of the
``slack`` destination (:func:`controller.engine.outbox.deliver_due` calls
:meth:`SlackSender.send`). It handles three kinds of outbox payloads:

* a rollout event, as :func:`controller.engine.notices.queue_event` queues it
  (``{"event": ..., "target": "#channel"}``): the rollout's parent message is
  posted the first time (``chat.postMessage``) and edited with
  ``chat.update`` after that, showing the stage, canary weight, key metrics
  against production, the analysis summary, who approved, links to the pull
  request and report, and, while an approval is awaited, Approve and Reject
  buttons saying who may press them; each event also gets a thread reply;
* a decision recorded from a Slack button
  (:func:`~controller.backends.notify.buttons.decision_message`, queued by
  the engine once it decided the press the webhook service put in the
  inbox): the parent message shows who approved or rejected, and the thread
  says so;
* an ephemeral reply to the person who pressed a button
  (:func:`~controller.backends.notify.buttons.ephemeral_message`, queued by
  the engine when it refused the press): POSTed to Slack's
  ``response_url``, and only when it points at Slack (``hooks.slack.com``)
  or at the API host this sender is configured with (a local test server),
  never anywhere else.

The parent message's ``channel`` and ``ts``, what it shows and the events
answered in its thread are kept in the store
(:class:`~controller.backends.store.SlackRecords`, one record per model
version), so a restarted controller keeps editing the same message. Failures become
:class:`~controller.backends.delivery.DeliveryError`: a 429 or ``ratelimited``
carries its ``Retry-After`` (:data:`DEFAULT_RETRY_AFTER` when Slack gave
none), and the outbox sends nothing more to Slack before it is up (the
``slack`` destination is this sender's one bot token, one workspace);
``channel_not_found``, ``invalid_auth``, ``not_in_channel`` and similar are
permanent; everything else (5xx, connection errors) is retried by the outbox
with backoff, so an outage loses nothing. slack-sdk's own retry handlers
(``RateLimitErrorRetryHandler`` and the rest) are off: each call is one
request, and the outbox, not a sleep in the controller's loop, decides when
to try again. The events of one rollout are queued under one ordering key
(:func:`~controller.backends.delivery.rollout_thread`), so its thread reads
in the order they happened.

Every message the sender posts carries Slack message metadata naming what it
is (``{"event_type": "flywheel_outbox", "event_payload": {"key": ...}}``: the
rollout's thread key for the parent, the event's or decision's key for a
reply), so that a message in doubt (the controller was killed after Slack
took it and before the store recorded it) is looked for before it is posted
again: a reply in the thread (``conversations.replies`` with
``include_all_metadata``), a parent in the channel's recent history
(``conversations.history``; a channel named ``#name`` is found with
``conversations.list``): :mod:`.slack_lookup`. What is found is adopted: a parent's ``ts`` is
saved and the message edited, a reply is counted as answered. These reads
need the ``channels:history`` and ``channels:read`` scopes (``groups:*`` for a
private channel); without them a message in doubt is posted, once more at
most, and a warning says why. An ephemeral reply to a ``response_url`` cannot
be read back and is sent at least once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse, WebClient
from slack_sdk.webhook import WebhookClient

from controller.backends.delivery import DeliveryError, rollout_thread
from controller.backends.notify import RolloutEvent, event_from_json
from controller.backends.notify.slack_lookup import find_parent, in_thread, metadata
from controller.backends.store import OutboxMessage, SlackMessage, SlackRecords

__all__ = [
    "APPROVE_ACTION",
    "DECISION_BLOCK",
    "DEFAULT_RETRY_AFTER",
    "REJECT_ACTION",
    "SLACK_API_URL",
    "SlackSender",
    "decision_value",
    "rollout_blocks",
]

SLACK_API_URL = "https://slack.com/api/"
DEFAULT_RETRY_AFTER = 1.0  # a rate limit without Retry-After: Slack's 1 message per second and channel
SLACK_HOOKS_HOST = "hooks.slack.com"
APPROVE_ACTION = "flywheel_approve"
REJECT_ACTION = "flywheel_reject"
DECISION_BLOCK = "flywheel_decision"
METADATA_EVENT_TYPE = (
    "flywheel_outbox"  # the event_type of the metadata every message the sender posts carries
)
LOOKUP_PAGE = 200  # messages per page when looking for a message in doubt
LOOKUP_PAGES = 5  # pages of a channel's history searched for a parent in doubt (the newest 1000 messages)
UNREADABLE_ERRORS = frozenset({"missing_scope", "not_allowed_token_type", "no_permission"})

PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "invalid_auth",
        "not_in_channel",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "is_archived",
    }
)
# chat.update cannot edit the parent any more (deleted, too old): post a new one.
LOST_PARENT_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# Kinds after which no approval is awaited any more (the buttons go away).
_CLEARS_AWAITING = frozenset(
    {"rollout_started", "step_reached", "approved", "promoted", "rolled_back", "rejected", "aborted"}
)
_MAX_REPLIED = 500  # event keys remembered per rollout, to not reply twice after a crash
_MAX_METRIC_FIELDS = 10  # Block Kit's limit of fields in a section

_log = logging.getLogger("flywheel.notify.slack")

State = dict[str, Any]  # what the sender works on: a SlackMessage's view with its reference fields
_REFERENCE = ("model", "version", "channel", "ts", "replied")


def decision_value(*, model: str, version: int, environment: str) -> str:
    """The value of the Approve/Reject buttons: what :mod:`webhooks.slack` reads a press's version from."""
    return json.dumps({"model": model, "version": version, "environment": environment}, sort_keys=True)


class SlackSender:
    """Outbox sender for the ``slack`` destination (see the module docstring).

    ``base_url`` is Slack's Web API by default; tests point it at a local
    server, whose host is then also accepted for ephemeral ``response_url``s.
    """

    def __init__(
        self,
        *,
        token: str,
        store: SlackRecords,
        base_url: str = SLACK_API_URL,
        timeout: int = 10,
    ) -> None:
        if not token.strip():
            raise ValueError("a Slack bot token (xoxb-...) is needed to post messages")
        self.store = store
        self.timeout = timeout
        # No retry inside the client: the outbox retries, and keeps the message meanwhile.
        self.client = WebClient(token=token, base_url=base_url, timeout=timeout, retry_handlers=[])
        parts = urlsplit(base_url)
        self._test_origin = (parts.scheme, parts.netloc) if parts.netloc != "slack.com" else None

    # ------------------------------------------------------------ dispatch

    def send(self, message: OutboxMessage) -> None:
        payload = message.payload
        kind = payload.get("kind")
        doubt = message.in_doubt  # an earlier attempt may have posted: look before posting
        try:
            if kind == "ephemeral":
                self._send_ephemeral(payload)
            elif kind == "decision":
                self._send_decision(payload, doubt=doubt)
            elif "event" in payload:
                event = event_from_json(cast(Mapping[str, object], payload["event"]))
                self._send_event(event, target=str(payload.get("target") or ""), doubt=doubt)
            else:
                raise DeliveryError(f"not a Slack message: {sorted(payload)}", permanent=True)
        except SlackApiError as exc:
            raise _api_failure(exc.response) from exc
        except SlackClientError as exc:
            raise DeliveryError(f"Slack client error: {exc}") from exc
        except (OSError, TimeoutError) as exc:  # URLError, refused connections, timeouts
            raise DeliveryError(f"cannot reach Slack: {exc}") from exc

    # -------------------------------------------------------------- events

    def _send_event(self, event: RolloutEvent, *, target: str, doubt: bool) -> None:
        state = self._load(event.model, event.version)
        if state is None:
            if not target:
                raise DeliveryError(f"no Slack channel for {event.model}'s notifications", permanent=True)
            state = {"model": event.model, "version": event.version, "replied": []}
        _apply_event(state, event)
        self._show(state, target=target, doubt=doubt)
        self._reply(state, key=event.key, text=_event_line(event), blocks=_reply_blocks(event), doubt=doubt)

    def _send_decision(self, payload: Mapping[str, Any], *, doubt: bool) -> None:
        model, version = str(payload["model"]), int(payload["version"])
        state = self._load(model, version)
        if state is None:  # the parent is not ours (yet): take the message the button was on
            channel, ts = payload.get("channel"), payload.get("ts")
            if not channel or not ts:
                raise DeliveryError(f"no Slack message known for {model} v{version}", permanent=True)
            state = {"model": model, "version": version, "replied": [], "channel": channel, "ts": ts}
        user, decision = str(payload["user"]), str(payload["decision"])
        field = "approvers" if decision == "approve" else "rejecters"
        if user not in state.get(field, []):
            state[field] = [*state.get(field, []), user]
        self._show(state, target=str(state.get("channel", "")), doubt=doubt)
        text = str(payload.get("message") or f"{user} {decision}d {model} v{version}.")
        key = f"decision:{payload.get('environment')}:{user}:{decision}"
        self._reply(
            state, key=key, text=f":bust_in_silhouette: {text} (from Slack)", blocks=None, doubt=doubt
        )

    def _show(self, state: State, *, target: str, doubt: bool) -> None:
        """Post the parent message, or edit it in place when it exists; remember where it is.

        In ``doubt`` with no parent on record (or the one on record gone), the
        channel is searched for a parent of this rollout first, and one found
        is adopted and edited rather than a second one posted.
        """
        blocks, text = rollout_blocks(state), _summary(state)
        key = rollout_thread("slack", model=str(state["model"]), version=int(state["version"]))
        if state.get("ts"):
            if self._edit(state, text=text, blocks=blocks, key=key):
                return
            target = target or str(state["channel"])
        if doubt:
            found = find_parent(self.client, target, key=key)
            if found is not None:
                _log.info("adopting the Slack message %s already posted for %s", found[1], key)
                state["channel"], state["ts"] = found
                if self._edit(state, text=text, blocks=blocks, key=key):
                    return
        response = self.client.chat_postMessage(
            channel=target, text=text, blocks=blocks, metadata=metadata(key)
        )
        state["channel"], state["ts"] = str(response["channel"]), str(response["ts"])
        self._save(state)

    def _edit(self, state: State, *, text: str, blocks: list[dict[str, Any]], key: str) -> bool:
        """Edit the parent on record and save it; ``False`` when Slack has it no more."""
        try:
            self.client.chat_update(
                channel=state["channel"], ts=state["ts"], text=text, blocks=blocks, metadata=metadata(key)
            )
        except SlackApiError as exc:
            if _error_code(exc.response) not in LOST_PARENT_ERRORS:
                raise
            _log.warning(
                "the Slack message of %s v%s is gone; posting a new one", state["model"], state["version"]
            )
            return False
        self._save(state)
        return True

    def _reply(
        self, state: State, *, key: str, text: str, blocks: list[dict[str, Any]] | None, doubt: bool
    ) -> None:
        """Post the thread reply ``key`` once: not when it is on record, nor (in doubt) in the thread."""
        if key in state["replied"]:
            return
        if doubt and in_thread(self.client, str(state["channel"]), str(state["ts"]), key=key):
            _log.info("the Slack reply %s is in the thread already; not posting it again", key)
        else:
            self.client.chat_postMessage(
                channel=state["channel"],
                thread_ts=state["ts"],
                text=text,
                blocks=blocks,
                metadata=metadata(key),
            )
        state["replied"] = [*state["replied"], key][-_MAX_REPLIED:]
        self._save(state)

    def _load(self, model: str, version: int) -> State | None:
        found = self.store.slack_message(model=model, version=version)
        if found is None:
            return None
        reference = {"channel": found.channel, "ts": found.ts, "replied": list(found.replied)}
        return {**found.view, "model": found.model, "version": found.version, **reference}

    def _save(self, state: State) -> None:
        self.store.save_slack_message(
            SlackMessage(
                model=str(state["model"]),
                version=int(state["version"]),
                channel=str(state.get("channel") or ""),
                ts=str(state.get("ts") or ""),
                view={name: value for name, value in state.items() if name not in _REFERENCE},
                replied=tuple(state["replied"]),
            )
        )

    # ----------------------------------------------------------- ephemeral

    def _send_ephemeral(self, payload: Mapping[str, Any]) -> None:
        url = str(payload.get("response_url") or "")
        if not self._allowed_response_url(url):
            raise DeliveryError(f"refusing to post to a response_url outside Slack: {url!r}", permanent=True)
        webhook = WebhookClient(url, timeout=self.timeout, retry_handlers=[])
        response = webhook.send(
            text=str(payload.get("text") or ""), response_type="ephemeral", replace_original=False
        )
        if response.status_code == 200:
            return
        if response.status_code == 429:
            raise DeliveryError("Slack rate-limited the reply", retry_after=_retry_after(response.headers))
        if response.status_code >= 500:
            raise DeliveryError(f"Slack answered {response.status_code} to the reply")
        # 404 expired_url, used_url, invalid_payload...: the reply cannot be delivered any more.
        raise DeliveryError(
            f"Slack refused the reply: {response.status_code} {response.body}", permanent=True
        )

    def _allowed_response_url(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname == SLACK_HOOKS_HOST and parts.port in (None, 443):
            return True
        return self._test_origin is not None and (parts.scheme, parts.netloc) == self._test_origin


# ------------------------------------------------------------------ failures


def _error_code(response: SlackResponse) -> str:
    data = response.data
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _retry_after(headers: Mapping[str, Any]) -> float:
    """Seconds to send nothing to Slack, from a rate-limited answer's ``Retry-After``."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            try:
                return max(float(str(raw).strip()), 0.0)
            except ValueError:
                return DEFAULT_RETRY_AFTER
    return DEFAULT_RETRY_AFTER


def _api_failure(response: SlackResponse) -> DeliveryError:
    error = _error_code(response) or f"HTTP {response.status_code}"
    if response.status_code == 429 or error == "ratelimited":
        return DeliveryError(f"Slack rate limit ({error})", retry_after=_retry_after(response.headers))
    if error in PERMANENT_ERRORS:
        return DeliveryError(f"Slack refused the message: {error}", permanent=True)
    return DeliveryError(f"Slack API error: {error} (HTTP {response.status_code})")


# ------------------------------------------------------------------ rendering


def _apply_event(state: State, event: RolloutEvent) -> None:
    """Fold ``event`` into what the parent message shows; an older event does not undo a newer one."""
    detail = event.detail
    for name in ("commit", "run", "pull_request", "report"):
        if detail.get(name):
            state[name] = detail[name]
    approvers = detail.get("approvers")
    if isinstance(approvers, list):
        state["approvers"] = sorted({*state.get("approvers", []), *(str(a) for a in approvers)})
    if state.get("at") and event.at < datetime.fromisoformat(str(state["at"])):
        return
    state["at"] = event.at.isoformat()
    state["kind"], state["message"] = event.kind, event.message
    state["stage"] = str(detail.get("stage") or event.environment)
    if isinstance(detail.get("weight"), int | float):
        state["weight"] = detail["weight"]
    elif event.kind in ("rollout_started", "promoted", "rolled_back", "aborted"):
        state.pop("weight", None)
    for name in ("metrics", "baseline"):
        if isinstance(detail.get(name), Mapping):
            state[name] = dict(cast(Mapping[str, Any], detail[name]))
    if "baseline_version" in detail:
        state["baseline_version"] = detail["baseline_version"]
    analysis = detail.get("analysis")
    if isinstance(analysis, Mapping) and analysis.get("summary"):
        state["analysis"] = str(analysis["summary"])
    if event.kind == "awaiting_approval":
        state["awaiting"] = {
            "environment": event.environment,
            "may_approve": str(detail.get("may_approve") or ""),
            "missing": detail.get("missing"),
        }
    elif event.kind in _CLEARS_AWAITING:
        state.pop("awaiting", None)


_HEADLINES = {
    "rollout_started": ":rocket: rolling out",
    "step_reached": ":arrow_forward: in progress",
    "analysis_inconclusive": ":grey_question: analysis inconclusive, holding",
    "analysis_failed": ":warning: analysis failed",
    "awaiting_approval": ":raised_hand: awaiting approval",
    "approved": ":white_check_mark: approved",
    "promoted": ":tada: promoted",
    "rolled_back": ":rewind: rolled back",
    "rejected": ":no_entry: rejected",
    "paused": ":double_vertical_bar: paused",
    "resumed": ":arrow_forward: resumed",
    "aborted": ":octagonal_sign: aborted",
}


def _escape(text: str) -> str:
    """Text safe inside mrkdwn: Slack's three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: object, label: str) -> str:
    text = str(url)
    if text.startswith(("https://", "http://")) and not any(c in text for c in "<>| \n"):
        return f"<{text}|{label}>"
    return f"{label}: `{_escape(text)}`"


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _escape(str(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(state: State) -> str:
    """The plain-text fallback of the parent message (notifications, screen readers)."""
    where = f" in {state['stage']}" if state.get("stage") else ""
    weight = f" at {state['weight']}%" if state.get("weight") is not None else ""
    status = str(state.get("kind", "update")).replace("_", " ")
    return f"{state['model']} v{state['version']}{where}{weight}: {status}"


def rollout_blocks(state: State) -> list[dict[str, Any]]:
    """The Block Kit layout of a rollout's parent message, from its accumulated ``state``."""
    model, version = str(state["model"]), int(state["version"])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{model} v{version}"[:150]}},
    ]
    status = _HEADLINES.get(str(state.get("kind")), str(state.get("kind", "")))
    facts = [f"*Status:* {status}"]
    if state.get("stage"):
        facts.append(f"*Stage:* {_escape(str(state['stage']))}")
    if state.get("weight") is not None:
        facts.append(f"*Canary:* {_number(state['weight'])}%")
    lines = ["  ·  ".join(facts)]
    if state.get("message"):
        lines.append(_escape(str(state["message"])))
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}})
    fields = _metric_fields(state)
    if fields:
        blocks.append({"type": "section", "fields": fields})
    notes = []
    if state.get("analysis"):
        notes.append(f"*Analysis:* {_escape(str(state['analysis']))}")
    if state.get("approvers"):
        notes.append(f"*Approved by:* {_escape(', '.join(state['approvers']))}")
    if state.get("rejecters"):
        notes.append(f"*Rejected by:* {_escape(', '.join(state['rejecters']))}")
    if notes:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(notes)[:3000]}})
    links = []
    if state.get("pull_request"):
        links.append(_link(state["pull_request"], "Pull request"))
    if state.get("report"):
        links.append(_link(state["report"], "Review report"))
    if state.get("commit"):
        links.append(f"commit `{_escape(str(state['commit'])[:12])}`")
    if links:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "  ·  ".join(links)}]})
    awaiting = state.get("awaiting")
    if isinstance(awaiting, Mapping):
        blocks.extend(_approval_blocks(model, version, awaiting))
    return blocks


def _metric_fields(state: State) -> list[dict[str, str]]:
    metrics = state.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return []
    baseline = state.get("baseline") if isinstance(state.get("baseline"), Mapping) else {}
    assert isinstance(baseline, Mapping)
    prod = f"prod v{state['baseline_version']}" if state.get("baseline_version") else "prod"
    fields = []
    for name, value in list(metrics.items())[:_MAX_METRIC_FIELDS]:
        line = f"*{_escape(str(name))}*\n{_number(value)}"
        old = baseline.get(name)
        if isinstance(old, int | float) and isinstance(value, int | float):
            line += f"  ({prod}: {_number(old)}, {value - old:+.4g})"
        else:
            line += "  (no baseline)"
        fields.append({"type": "mrkdwn", "text": line})
    return fields


def _approval_blocks(model: str, version: int, awaiting: Mapping[str, Any]) -> list[dict[str, Any]]:
    environment = str(awaiting.get("environment") or "")
    who = str(awaiting.get("may_approve") or "someone the approval policy names")
    missing = awaiting.get("missing")
    more = f" ({missing} more needed)" if isinstance(missing, int) and missing > 0 else ""
    value = decision_value(model=model, version=version, environment=environment)
    text = f":raised_hand: *Approval needed for {_escape(environment)}*{more}."
    text += f" Who may approve: {_escape(who)}."
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}},
        {
            "type": "actions",
            "block_id": DECISION_BLOCK,
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "text": {"type": "plain_text", "text": "Approve"},
                    "style": "primary",
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": REJECT_ACTION,
                    "text": {"type": "plain_text", "text": "Reject"},
                    "style": "danger",
                    "value": value,
                    "confirm": {
                        "title": {"type": "plain_text", "text": "Reject this version?"},
                        "text": {"type": "plain_text", "text": f"{model} v{version} for {environment}"[:300]},
                        "confirm": {"type": "plain_text", "text": "Reject"},
                        "deny": {"type": "plain_text", "text": "Cancel"},
                    },
                },
            ],
        },
    ]


def _event_line(event: RolloutEvent) -> str:
    headline = _HEADLINES.get(event.kind, event.kind)
    return f"{headline} — {event.environment}: {event.message}"


def _reply_blocks(event: RolloutEvent) -> list[dict[str, Any]]:
    lines = [f"*{_HEADLINES.get(event.kind, event.kind)}* — {_escape(event.environment)}"]
    lines.append(_escape(event.message))
    detail = event.detail
    if event.kind == "awaiting_approval" and detail.get("may_approve"):
        lines.append(f"Who may approve: {_escape(str(detail['may_approve']))}")
    if detail.get("reason"):
        lines.append(f"Reason: {_escape(str(detail['reason']))}")
    analysis = detail.get("analysis")
    if isinstance(analysis, Mapping):
        results = analysis.get("results")
        if analysis.get("summary"):
            lines.append(f"Analysis: {_escape(str(analysis['summary']))}")
        if isinstance(results, Sequence) and not isinstance(results, str):
            for result in list(results)[:10]:
                if isinstance(result, Mapping):
                    name = result.get("check") or result.get("name") or "check"
                    said = result.get("message") or result.get("rule") or ""
                    outcome = result.get("outcome") or ""
                    lines.append(f"• {_escape(str(name))}: {_escape(str(outcome))} — {_escape(str(said))}")
    return [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}}]

"""Polling the GitHub API: the fallback for webhook deliveries that never arrived.

GitHub does not redeliver a webhook on its own, and a receiver can be down,
unreachable or misconfigured. :class:`GitHubPoller` reads what the webhooks
would have said and queues it in the inbox as the same events, so that one
handler (:mod:`controller.engine.github_events`) deals with both:

* **pull requests**: every open pull request (``GET /repos/{o}/{r}/pulls``,
  paginated) is compared with what the store last recorded
  (:class:`~controller.backends.store.PullRequestRecords`). One never seen is
  queued as ``opened``, a new head as ``synchronize``, one recorded closed as
  ``reopened``; one recorded open that is no longer listed is read alone
  (``GET .../pulls/{n}``) and queued as ``closed``, merged or not.
* **comment commands**: comments created since the last poll
  (``GET .../issues/comments?since=``) that hold a ``/flywheel`` line and
  were not handled yet are queued as ``issue_comment`` ``created``. As with
  webhooks, commands come from a comment as it was created: one edited since
  is left alone, since the API cannot tell what it said at first. A
  webhook and a poll of the same comment run its commands once (the store
  marks each comment handled). Comments from before the first poll are
  history, not commands; the poll cursor is kept in the store.

Pushes need no polling here: the controller fetches the repository itself.
Each queued event's delivery id is derived from what it reports, so polling
twice before the events are handled queues them once. The payloads have the
webhook's shape, restricted to the fields Flywheel reads.

The poller makes only reads. GitHub being down, or rate limiting, delays
the next poll (with backoff, or until the limit resets) and loses nothing:
what was missed is still there to be read. Any other failure (a bug, the
store) is logged with its traceback once, when it starts, and backs off the
same way; it is never raised into the controller's loop, which calls
:meth:`GitHubPoller.poll_if_due`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from github import Auth, GithubException, UnknownObjectException
from github.PullRequest import PullRequest as GitHubPull
from github.Repository import Repository

from controller.backends.delivery import Backoff
from controller.backends.forge.github import DEFAULT_API_URL, delivery_error, github_client
from controller.backends.store import Inbox, JSONObject, PollCursor, PullRequestRecords
from controller.clock import Clock
from controller.settings import GitHubSettings

__all__ = ["SOURCE", "GitHubPoller"]

log = logging.getLogger("flywheel.github.poll")

SOURCE = "github"  # the inbox source of webhook deliveries, so one handler serves both
COMMENT_OVERLAP_SECONDS = 120.0  # read again what changed this long before the cursor: listings lag
MAX_BACKOFF_SECONDS = 900.0
_ISSUE_NUMBER = re.compile(r"/issues/(\d+)$")
_COMMAND = re.compile(r"^/flywheel(\s|$)", re.MULTILINE)


class GitHubPoller:
    """Queues inbox events for the pull requests and comment commands the webhooks did not deliver."""

    def __init__(
        self,
        inbox: Inbox,
        *,
        pulls: PullRequestRecords,
        repository: str,
        auth: Auth.Auth,
        base_url: str = DEFAULT_API_URL,
        timeout: int = 15,
        interval_seconds: float = 60.0,
        clock: Clock,
    ) -> None:
        self._inbox = inbox
        self._pulls = pulls
        self._api_url = base_url.rstrip("/")
        self.repository = repository
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._github = github_client(
            auth=auth, base_url=base_url, timeout=timeout, seconds_between_requests=None
        )
        self._repo: Repository | None = None
        self._next = 0.0  # clock time of the next poll
        self._failures = 0
        self._backoff = Backoff(first=2 * interval_seconds, most=MAX_BACKOFF_SECONDS)  # after a failure

    @classmethod
    def from_settings(
        cls, inbox: Inbox, settings: GitHubSettings, *, pulls: PullRequestRecords, **options: Any
    ) -> GitHubPoller:
        return cls(
            inbox,
            pulls=pulls,
            repository=settings.repository,
            auth=settings.auth(),
            base_url=settings.api_url,
            timeout=settings.timeout,
            interval_seconds=settings.poll_seconds,
            **options,
        )

    def close(self) -> None:
        self._github.close()

    def poll_if_due(self) -> int:
        """Poll when the interval (or the backoff after a failure) has passed; the number of events queued.

        A failure is logged, never raised: the next poll reads what this one could not.
        """
        now = self._clock.monotonic()
        if now < self._next:
            return 0
        try:
            queued = self.poll()
        except Exception as exc:
            self._failures += 1
            retry_after = None
            if isinstance(exc, GithubException):
                retry_after = delivery_error(exc, now=self._clock.timestamp()).retry_after
            wait = self._backoff.seconds(self._failures, retry_after=retry_after)
            self._next = now + wait
            if isinstance(exc, GithubException | requests.RequestException):
                log.warning("polling GitHub failed (%s); next try in %.0fs", _describe(exc), wait)
            else:  # not GitHub's doing: the traceback once, when it starts
                log.error(
                    "polling GitHub failed (%s); next try in %.0fs",
                    _describe(exc),
                    wait,
                    exc_info=self._failures == 1,
                )
            return 0
        self._failures = 0
        self._next = now + self.interval_seconds
        return queued

    def poll(self) -> int:
        """Read open pull requests and new comments once; the number of inbox events queued."""
        repo = self._repo = self._repo or self._github.get_repo(self.repository)  # lazy: no GET
        return self._poll_pulls(repo) + self._poll_comments(repo)

    # -------------------------------------------------------------- pulls

    def _poll_pulls(self, repo: Repository) -> int:
        queued = 0
        listed: set[int] = set()
        for pull in repo.get_pulls(state="open", sort="updated", direction="desc"):
            listed.add(pull.number)
            stored = self._pulls.pull_request(pull.number)
            if stored is None:
                action = "opened"
            elif stored.state != "open":
                action = "reopened"
            elif stored.head_sha != pull.head.sha:
                action = "synchronize"
            else:
                continue
            queued += self._queue_pull(repo, pull, action)
        for number in sorted({recorded.number for recorded in self._pulls.open_pull_requests()} - listed):
            try:
                pull = repo.get_pull(number)
            except UnknownObjectException:
                log.warning("pull request #%s of %s is gone; it stays recorded open", number, repo.full_name)
                continue
            if pull.state != "open":
                queued += self._queue_pull(repo, pull, "closed")
        return queued

    def _queue_pull(self, repo: Repository, pull: GitHubPull, action: str) -> int:
        payload = _pull_request_payload(pull)
        delivery = f"poll-pr-{pull.number}-{action}-{payload['updated_at']}-{pull.head.sha}"
        event: JSONObject = {
            "action": action,
            "number": pull.number,
            "pull_request": payload,
            "repository": {"full_name": repo.full_name},
            "sender": payload["user"],
            "flywheel_polled": True,
        }
        if not self._inbox.put_event(
            source=SOURCE, delivery_id=delivery, kind=f"pull_request.{action}", payload=event
        ):
            return 0  # queued by an earlier poll and not handled yet, or handled already
        log.info("missed delivery: pull request #%s %s (found by polling)", pull.number, action)
        return 1

    # ----------------------------------------------------------- comments

    def _poll_comments(self, repo: Repository) -> int:
        cursor = self._pulls.poll_cursor()
        if cursor is None:  # the first poll: what was said before is history
            now = self._clock.now().astimezone(UTC).replace(microsecond=0)  # GitHub's times have seconds
            self._pulls.save_poll_cursor(PollCursor(listening_since=now, comments_since=now))
            return 0
        start, newest = cursor.listening_since, cursor.comments_since
        since = max(start, newest - timedelta(seconds=COMMENT_OVERLAP_SECONDS))
        queued = 0
        for comment in repo.get_issues_comments(sort="updated", direction="asc", since=since):
            newest = max(newest, _aware(comment.updated_at))
            created = _aware(comment.created_at)
            if created < start or _aware(comment.updated_at) != created:
                continue  # said before Flywheel listened, or edited: webhooks ignore edits too
            if not _COMMAND.search(comment.body or ""):
                continue
            if self._pulls.comment_handled(comment.id):
                continue
            queued += self._queue_comment(repo, comment)
        self._pulls.save_poll_cursor(PollCursor(listening_since=start, comments_since=newest))
        return queued

    def _queue_comment(self, repo: Repository, comment: Any) -> int:
        match = _ISSUE_NUMBER.search(comment.issue_url or "")
        if match is None:
            return 0
        number = int(match.group(1))
        issue: JSONObject = {"number": number}
        known_pull = self._pulls.pull_request(number) is not None
        if known_pull or repo.get_issue(number).pull_request is not None:
            issue["pull_request"] = {"url": f"{self._api_url}/repos/{repo.full_name}/pulls/{number}"}
        user = {"login": comment.user.login, "type": comment.user.type}
        event: JSONObject = {
            "action": "created",
            "issue": issue,
            "comment": {
                "id": comment.id,
                "body": comment.body,
                "user": user,
                "html_url": comment.html_url,
                "created_at": _timestamp(_aware(comment.created_at)),
            },
            "repository": {"full_name": repo.full_name},
            "sender": user,
            "flywheel_polled": True,
        }
        if not self._inbox.put_event(
            source=SOURCE,
            delivery_id=f"poll-comment-{comment.id}",
            kind="issue_comment.created",
            payload=event,
        ):
            return 0
        log.info("missed delivery: a command in comment %s on #%s (found by polling)", comment.id, number)
        return 1


def _pull_request_payload(pull: GitHubPull) -> JSONObject:
    """The fields of a webhook's ``pull_request`` that Flywheel reads, from attributes a list answer has."""
    return {
        "number": pull.number,
        "state": pull.state,
        "merged": pull.merged_at is not None,
        "merged_at": _timestamp(_aware(pull.merged_at)) if pull.merged_at is not None else None,
        "updated_at": _timestamp(_aware(pull.updated_at or pull.created_at)),
        "html_url": pull.html_url,
        "user": {"login": pull.user.login, "type": pull.user.type},
        "head": _part(pull.head),
        "base": _part(pull.base),
    }


def _part(part: Any) -> JSONObject:
    repo = part.repo  # None when the fork was deleted
    return {
        "ref": part.ref,
        "sha": part.sha,
        "repo": {"id": repo.id, "full_name": repo.full_name} if repo is not None else None,
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # GitHub's own form, which sorts as text


def _describe(exc: Exception) -> str:
    if isinstance(exc, GithubException):
        return f"GitHub answered {exc.status}"
    return f"{type(exc).__name__}: {exc}"

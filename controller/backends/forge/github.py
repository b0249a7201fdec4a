"""The GitHub forge: pull-request reports, check runs and comment replies, delivered through the outbox.

Two halves, so that no call to GitHub is ever made inline (Invariant 5):

* :class:`GitHubForge` implements :class:`~controller.backends.forge.Forge`
  for the reconciler, and offers :meth:`~GitHubForge.react` and
  :meth:`~GitHubForge.reply` for comment commands. Each method only queues an
  outbox message (destination ``"github"``) under a key that makes the newest
  payload win: one key per pull request and model for the sticky report, one
  per commit and model for the check, one per comment for a reply. An outage
  therefore delays messages and never duplicates them. Each message is its
  own ordering key: a report, a check run or a reply is one message whose
  newest payload replaces the older one, so nothing older can overtake it.
* :class:`GitHubSender` is the outbox :class:`~controller.backends.delivery.Sender`
  for ``"github"``. It makes the PyGithub calls when the controller's loop
  delivers, and maps GitHub's answers to :class:`DeliveryError`: rate limits
  (a 403 or 429 with ``Retry-After``, or with ``x-ratelimit-remaining: 0`` and
  ``x-ratelimit-reset``) to ``retry_after``, which pauses the whole ``github``
  destination (one API host and credential: GitHub counts its limits per
  token or installation, across repositories) until then, 5xx answers
  and connection errors to a retry with backoff, a pull request or
  repository that is gone (404, 410, 422) to ``permanent``. PyGithub's own
  retries are switched off so that the outbox alone decides when to try again.

The sticky report is found again by the hidden marker on its first line
(:func:`controller.engine.report.marker`), and its comment id is remembered
in the store (:class:`~controller.backends.store.PullRequestRecords`), so
that it is edited in place and never posted a second time, even after a
crash between posting and marking the message sent. Replies to commands
carry a marker of their own for the same reason (``flywheel:reply
comment=<id>``, the key of their outbox message), and check runs are
remembered the same way and carry their outbox message's key as their
``external_id``. Whenever the store knows no id for a comment or a check run
(as after a crash between creating it and remembering its id) the sender
lists the issue's comments, or the commit's check runs of that name, and
adopts the one with the marker (the one with the ``external_id``, else the
newest of the name) before creating anything; with an id on record it edits.
So a message in doubt is never posted twice, and needs no check of its own.
A reaction is idempotent on GitHub itself (a second one by the same user
answers 200 with the first).

On GitHub a proposal is a pull request's head branch (the reconciler works
from git branches). The number of its pull request comes with the review
target (:attr:`~controller.backends.forge.ReviewTarget.pull_request`, which
the engine fills in from the ``pull_request`` events it recorded), and the
sender posts to it as it is. Only for a branch whose pull request was not
known when the report was queued (a push polled before its pull request)
does the sender look for it: in the records (:func:`pull_request_number`),
which may know it by then, and otherwise through the API
(``GET /repos/{owner}/{repo}/pulls?head=owner:branch``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import requests
from github import Auth, Consts, Github, GithubException, RateLimitExceededException, UnknownObjectException
from github.Repository import Repository

from controller.backends.delivery import DeliveryError
from controller.backends.forge import CommitState, ReviewTarget
from controller.backends.store import (
    BranchPullRef,
    CheckRunRef,
    GitHubRef,
    Outbox,
    OutboxMessage,
    PullRequestRecords,
    ReplyCommentRef,
    ReportCommentRef,
    pull_ref_number,
)
from controller.clock import Clock
from controller.settings import CheckMode, GitHubSettings

__all__ = [
    "DESTINATION",
    "GitHubForge",
    "GitHubSender",
    "delivery_error",
    "github_client",
    "pull_request_number",
    "report_marker",
]

log = logging.getLogger("flywheel.github")

DESTINATION = "github"
DEFAULT_API_URL = Consts.DEFAULT_BASE_URL
REACTIONS = frozenset({"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"})
STATUS_DESCRIPTION_LIMIT = 140  # GitHub's limit on a commit status description
SUMMARY_LIMIT = 65_535  # GitHub's limit on a check run's output summary
NO_PULL_REQUEST_ATTEMPTS = 10  # a branch without a pull request is retried this often, then given up
SECONDARY_LIMIT_WAIT = 60.0  # GitHub: with no Retry-After, wait at least a minute


# ------------------------------------------------------------- pull requests


def pull_request_number(pulls: PullRequestRecords, proposal: str) -> int | None:
    """The pull request ``proposal`` names: a number, ``pull/<n>/head``, or a branch with a recorded one."""
    if proposal.isdigit():
        return int(proposal)
    number = pull_ref_number(proposal)
    if number is not None:
        return number
    return pulls.pull_number_for_branch(proposal)


def report_marker(model: str) -> str:
    """The hidden first line of a model's sticky report; as ``controller.engine.report.marker``."""
    return f"<!-- flywheel:report model={model} -->"


def _reply_marker(comment_id: int) -> str:
    return f"<!-- flywheel:reply comment={comment_id} -->"


# ------------------------------------------------------------------- forge


class GitHubForge:
    """Queues what the reconciler and the comment commands show on GitHub; :class:`GitHubSender` sends it."""

    def __init__(self, outbox: Outbox, repo_full_name: str) -> None:
        if repo_full_name.count("/") != 1:
            raise ValueError(f"expected owner/name, got {repo_full_name!r}")
        self._outbox = outbox
        self.repo = repo_full_name

    def publish_report(self, target: ReviewTarget, body: str) -> None:
        self._queue(
            "report", target.proposal, target.model, **_about(target), pr=target.pull_request, body=body
        )

    def set_status(self, target: ReviewTarget, state: CommitState, description: str) -> None:
        self._queue(
            "check", target.commit, target.model, **_about(target), state=state, description=description
        )

    def react(self, comment_id: int, content: str) -> None:
        """Queue a reaction (``eyes``, ``+1``, ``-1``, ...) on an issue or pull-request comment."""
        if content not in REACTIONS:
            raise ValueError(f"not a GitHub reaction: {content!r}")
        self._queue("reaction", comment_id, content, replace=False, comment_id=comment_id, content=content)

    def reply(self, issue: int, body: str, *, in_reply_to: int) -> None:
        """Queue the answer to comment ``in_reply_to`` on ``issue``; one answer per comment, sent once."""
        self._queue("reply", in_reply_to, replace=False, issue=issue, in_reply_to=in_reply_to, body=body)

    def _queue(self, kind: str, *key: object, replace: bool = True, **fields: Any) -> None:
        """Queue a ``kind`` message for this repository under ``github:<repo>:<kind>:<key...>``."""
        self._outbox.enqueue(
            destination=DESTINATION,
            key=":".join(["github", self.repo, kind, *map(str, key)]),
            payload={"kind": kind, "repo": self.repo, **fields},
            replace=replace,
        )


def _about(target: ReviewTarget) -> dict[str, Any]:
    """The fields of a message about one model on one proposal."""
    return {"proposal": target.proposal, "model": target.model, "commit": target.commit}


# ------------------------------------------------------------------ sender


def github_client(
    *,
    auth: Auth.Auth,
    base_url: str = DEFAULT_API_URL,
    timeout: int = 15,
    per_page: int = 100,
    seconds_between_requests: float | None = Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS,
    seconds_between_writes: float | None = Consts.DEFAULT_SECONDS_BETWEEN_WRITES,
) -> Github:
    """A PyGithub client with its own retries off: the caller decides when to try again."""
    return Github(
        auth=auth,
        base_url=base_url.rstrip("/"),
        timeout=timeout,
        per_page=per_page,
        retry=None,
        seconds_between_requests=seconds_between_requests,
        seconds_between_writes=seconds_between_writes,
        lazy=True,  # no GET before a PATCH/POST to an object whose URL we know
    )


class GitHubSender:
    """Delivers outbox messages for ``"github"`` with PyGithub; see the module docstring for the mapping."""

    def __init__(
        self,
        store: PullRequestRecords,
        *,
        auth: Auth.Auth,
        base_url: str = DEFAULT_API_URL,
        timeout: int = 15,
        per_page: int = 100,
        checks: CheckMode = "check-runs",
        seconds_between_requests: float | None = Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS,
        seconds_between_writes: float | None = Consts.DEFAULT_SECONDS_BETWEEN_WRITES,
        clock: Clock,
    ) -> None:
        self._store = store
        self._checks = checks
        self._clock = clock
        self._github = github_client(
            auth=auth,
            base_url=base_url,
            timeout=timeout,
            per_page=per_page,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
        )
        self._repos: dict[str, Repository] = {}

    @classmethod
    def from_settings(
        cls, store: PullRequestRecords, settings: GitHubSettings, **options: Any
    ) -> GitHubSender:
        return cls(
            store,
            auth=settings.auth(),
            base_url=settings.api_url,
            timeout=settings.timeout,
            checks=settings.check_mode,
            **options,
        )

    def close(self) -> None:
        self._github.close()

    def send(self, message: OutboxMessage) -> None:
        payload = message.payload
        kind = payload.get("kind")
        try:
            if kind == "report":
                self._send_report(payload, attempts=message.attempts)
            elif kind == "check":
                self._send_check(payload, key=message.key)
            elif kind == "reaction":
                self._send_reaction(payload)
            elif kind == "reply":
                self._send_reply(payload)
            else:
                raise DeliveryError(f"unknown GitHub message kind {kind!r}", permanent=True)
        except GithubException as exc:
            raise delivery_error(exc, now=self._clock.timestamp()) from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"GitHub unreachable: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------ messages

    def _send_report(self, payload: Mapping[str, Any], *, attempts: int) -> None:
        repo = self._repo(payload["repo"])
        proposal = str(payload["proposal"])
        number = payload.get("pr") or self._pull_for(repo, proposal)
        if number is None:
            raise DeliveryError(
                f"no pull request for {proposal} yet",
                permanent=attempts + 1 >= NO_PULL_REQUEST_ATTEMPTS,
            )
        model = str(payload["model"])
        body = str(payload["body"])
        marker = report_marker(model)
        if not body.startswith(marker):
            body = f"{marker}\n{body}"
        self._upsert_comment(
            repo,
            int(number),
            marker=marker,
            body=body,
            ref=ReportCommentRef(repository=repo.full_name, number=int(number), model=model),
        )

    def _send_reply(self, payload: Mapping[str, Any]) -> None:
        repo = self._repo(payload["repo"])
        in_reply_to = int(payload["in_reply_to"])
        marker = _reply_marker(in_reply_to)
        self._upsert_comment(
            repo,
            int(payload["issue"]),
            marker=marker,
            body=f"{marker}\n{payload['body']}",
            ref=ReplyCommentRef(repository=repo.full_name, in_reply_to=in_reply_to),
        )

    def _send_reaction(self, payload: Mapping[str, Any]) -> None:
        # GitHub answers 200 with the existing reaction when it is already there: idempotent.
        repo = self._repo(payload["repo"])
        repo.get_issue(0).get_comment(int(payload["comment_id"])).create_reaction(str(payload["content"]))

    def _send_check(self, payload: Mapping[str, Any], *, key: str) -> None:
        repo = self._repo(payload["repo"])
        model = str(payload["model"])
        sha = str(payload["commit"])
        state = str(payload["state"])
        description = str(payload.get("description") or "")
        name = f"flywheel/{model}"
        if self._checks == "statuses":
            github_state = state if state in ("pending", "success", "failure", "error") else "error"
            repo.get_commit(sha).create_status(
                github_state, description=description[:STATUS_DESCRIPTION_LIMIT], context=name
            )
            return
        fields: dict[str, Any] = {
            "output": {"title": _check_title(state, description), "summary": _check_summary(description)}
        }
        if state == "pending":
            fields["status"] = "in_progress"
        else:
            fields["status"] = "completed"
            fields["conclusion"] = "success" if state == "success" else "failure"
            fields["completed_at"] = self._clock.now()
        ref = CheckRunRef(repository=repo.full_name, commit=sha, model=model)
        check_id = self._store.github_id(ref)
        if check_id is None:
            check_id = _adopted_check(repo.get_commit(sha).get_check_runs(check_name=name), key=key)
        if check_id is not None:
            try:
                repo.get_check_run(check_id).edit(**fields)
            except UnknownObjectException:
                check_id = None
            else:
                self._store.remember_github_id(ref, check_id)
                return
        created = repo.create_check_run(name=name, head_sha=sha, external_id=key, **fields)
        self._store.remember_github_id(ref, created.id)

    # ------------------------------------------------------------- helpers

    def _repo(self, full_name: str) -> Repository:
        repo = self._repos.get(full_name)
        if repo is None:
            repo = self._repos[full_name] = self._github.get_repo(full_name)
        return repo

    def _pull_for(self, repo: Repository, proposal: str) -> int | None:
        number = pull_request_number(self._store, proposal)
        if number is not None:
            return number
        found = BranchPullRef(repository=repo.full_name, branch=proposal)
        cached = self._store.github_id(found)
        if cached is not None:
            return cached
        owner = repo.full_name.split("/", 1)[0]
        pulls = repo.get_pulls(state="all", sort="created", direction="desc", head=f"{owner}:{proposal}")
        for pull in pulls:  # newest first; an open one wins over closed ones
            if pull.state == "open" or number is None:
                number = pull.number
            if pull.state == "open":
                break
        if number is not None:
            self._store.remember_github_id(found, number)
        return number

    def _upsert_comment(
        self, repo: Repository, number: int, *, marker: str, body: str, ref: GitHubRef
    ) -> None:
        """Edit our comment that starts with ``marker`` on issue ``number``; create it only when absent."""
        issue = repo.get_issue(number)
        known = self._store.github_id(ref)
        if known is not None:
            try:
                issue.get_comment(known).edit(body)
                return
            except UnknownObjectException:
                log.info("comment %s on %s#%s is gone; looking for another", known, repo.full_name, number)
        for comment in _ours(issue.get_comments(), marker):
            try:
                if comment.body != body:
                    comment.edit(body)
            except GithubException as exc:
                limited = delivery_error(exc, now=self._clock.timestamp()).retry_after is not None
                if exc.status != 403 or limited:
                    raise
                continue  # 403 and no rate limit: someone else's comment that copied the marker
            self._store.remember_github_id(ref, comment.id)
            return
        created = issue.create_comment(body)
        self._store.remember_github_id(ref, created.id)


def _ours(comments: Any, marker: str) -> Iterator[Any]:
    for comment in comments:
        if (comment.body or "").lstrip().startswith(marker):
            yield comment


def _adopted_check(runs: Iterable[Any], *, key: str) -> int | None:
    """The check run to edit among a commit's runs of one name (newest first): the one whose
    ``external_id`` is ``key``, else the newest (a run created before runs carried their key)."""
    newest = None
    for run in runs:
        if run.external_id == key:
            return int(run.id)
        newest = int(run.id) if newest is None else newest
    return newest


def _check_title(state: str, description: str) -> str:
    words = {"pending": "Running", "success": "Passed", "failure": "Failed", "error": "Errored"}
    return words.get(state, state.capitalize()) + (f": {description}" if description else "")[:200]


def _check_summary(description: str) -> str:
    text = description or "No details."
    return (text + "\n\nThe full report is the Flywheel comment on the pull request.")[:SUMMARY_LIMIT]


def _header_number(headers: Mapping[str, Any], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def delivery_error(exc: GithubException, *, now: float) -> DeliveryError:
    """Map a GitHub error answer to how the outbox should retry it."""
    status = exc.status
    headers = {str(k).lower(): v for k, v in (exc.headers or {}).items()}
    what = f"GitHub answered {status}: {exc.message or exc.data}"
    retry_after = _header_number(headers, "retry-after")
    remaining = _header_number(headers, "x-ratelimit-remaining")
    reset = _header_number(headers, "x-ratelimit-reset")
    rate_limited = isinstance(exc, RateLimitExceededException) or (
        status in (403, 429) and (retry_after is not None or remaining == 0)
    )
    if rate_limited:
        if retry_after is not None:
            wait = retry_after
        elif remaining == 0 and reset is not None:
            wait = reset - now + 1.0
        else:
            wait = SECONDARY_LIMIT_WAIT
        return DeliveryError(f"rate limited: {what}", retry_after=max(wait, 1.0))
    if status >= 500 or status in (401, 408, 409):
        return DeliveryError(what)  # backoff: a glitch, an outage, or credentials about to be fixed
    return DeliveryError(what, permanent=True)  # 403, 404, 410, 422: trying again cannot help

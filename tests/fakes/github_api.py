"""A local HTTP server that speaks the parts of GitHub's REST API Flywheel calls, for PyGithub's real client.

Tests point ``Github(base_url=fake.api_url)`` at it; the URL has GitHub
Enterprise's ``/api/v3`` prefix, so the Enterprise path is what is exercised.
It answers with GitHub's shapes, status codes and headers:

* ``GET /repos/{o}/{r}``; ``GET /repos/{o}/{r}/pulls`` (``head=owner:branch``, ``state``,
  ``sort``/``direction``) and ``GET .../pulls/{n}`` (only the single pull has ``merged``);
  ``GET .../issues/{n}`` (with ``pull_request`` for a pull request);
* issue comments: list per issue (``per_page``/``page`` with ``Link`` headers), list for
  the repository (``since``, ``sort``, ``direction``), create, get, edit;
  reactions on a comment (201 when new, 200 with the existing one when repeated);
* check runs: create, update, get, list for a commit (``check_name``); commit statuses;
* ``POST /app/installations/{id}/access_tokens``, which wants the App's RS256 JWT
  (checked against the App's public key) and hands out an installation token;
* with ``git_dir`` (a bare repository), the Git Data API, contents, and creating and
  editing pull requests (:mod:`tests.fakes.github_git`);
* ``X-RateLimit-*`` headers on every answer; 401 for a missing or unknown token;
  404 ``{"message": "Not Found"}`` for what does not exist.

Failures are scripted: :meth:`FakeGitHub.fail` answers the next requests
with a given status, headers and message (5xx, secondary rate limit with
``Retry-After``, exhausted primary limit with ``X-RateLimit-Reset``), and
:attr:`FakeGitHub.down` makes every connection drop without an answer.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

from tests.fakes.github_git import GitData
from tests.fixtures.required import reference

__all__ = [
    "Failure",
    "FakeGitHub",
    "Request",
    "issue_comment_event",
    "pull_request_event",
    "reference_payload",
]

PREFIX = "/api/v3"
RATE_LIMIT = 5000
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID."
)
PRIMARY_MESSAGE = "API rate limit exceeded for installation ID 42."
DOCS = "https://docs.github.com/rest"


@dataclass
class Request:
    method: str
    path: str  # without the /api/v3 prefix and query
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class Failure:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None  # only requests with this method fail; None: any


class FakeGitHub:
    """The fake GitHub; use as a context manager (started on enter, stopped on exit)."""

    def __init__(
        self,
        *,
        repository: str = "octo-org/models",
        token: str = "ghp_test_token",
        bot_login: str = "flywheel-bot",
        app_id: int = 1234,
        installation_id: int = 42,
        app_public_key: str | None = None,
        git_dir: Path | None = None,
    ) -> None:
        self.repository = repository
        self.owner, self.name = repository.split("/")
        self.tokens: dict[str, str] = {token: bot_login}  # token -> login of whoever it authenticates
        self.app_id = app_id
        self.installation_id = installation_id
        self.app_public_key = app_public_key
        self.down = False
        self.requests: list[Request] = []
        self.comments: dict[int, dict[str, Any]] = {}  # id -> comment, in creation order
        self.comment_issue: dict[int, int] = {}  # comment id -> issue number
        self.issues: set[int] = set()
        self.pulls: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.installation_tokens: list[str] = []
        self.remaining = RATE_LIMIT
        self.reset_at = int(time.time()) + 3600
        self._failures: list[Failure] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        # the Git Data API, contents and pull-request writes over this bare repository (github_git.py)
        self.git = GitData(self, git_dir) if git_dir is not None else None

    # ------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(_Handler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- scripting

    def fail(
        self,
        status: int,
        message: str = "Server Error",
        *,
        times: int = 1,
        method: str | None = None,
        **headers: str,
    ) -> None:
        """Answer the next ``times`` requests (of ``method``, if given) with ``status`` and ``message``.

        Headers are given by name with ``_`` for ``-``.
        """
        names = {k.replace("_", "-"): v for k, v in headers.items()}
        with self._lock:
            self._failures.extend(Failure(status, message, names, method) for _ in range(times))

    def secondary_rate_limit(self, *, retry_after: int, times: int = 1, method: str | None = None) -> None:
        self.fail(403, SECONDARY_MESSAGE, times=times, method=method, Retry_After=str(retry_after))

    def exhaust_rate_limit(self, *, reset_in: int) -> None:
        """The next request meets an exhausted primary limit that resets in ``reset_in`` seconds."""
        self.fail(
            403,
            PRIMARY_MESSAGE,
            X_RateLimit_Remaining="0",
            X_RateLimit_Reset=str(int(time.time()) + reset_in),
        )

    def add_pull(
        self,
        number: int,
        *,
        head_ref: str,
        head_sha: str,
        author: str = "octocat",
        state: str = "open",
        fork: bool = False,
    ) -> dict[str, Any]:
        """A pull request; with ``fork`` its head is in ``author``'s fork of the repository."""
        with self._lock:
            return self.add_pull_locked(
                number, head_ref=head_ref, head_sha=head_sha, author=author, state=state, fork=fork
            )

    def add_pull_locked(
        self,
        number: int,
        *,
        head_ref: str,
        head_sha: str,
        author: str = "octocat",
        state: str = "open",
        fork: bool = False,
    ) -> dict[str, Any]:
        """:meth:`add_pull` with the lock held (a request's handler creating one)."""
        base_repo = _repository(self.repository)
        head_repo = _repository(f"{author}/{self.name}", repo_id=78) if fork else base_repo
        owner = author if fork else self.owner
        pull = {
            "url": f"{self.api_url}/repos/{self.repository}/pulls/{number}",
            "html_url": f"https://github.example/{self.repository}/pull/{number}",
            "id": 9000 + number,
            "number": number,
            "state": state,
            "title": f"Proposal {number}",
            "user": _user(author),
            "head": {"label": f"{owner}:{head_ref}", "ref": head_ref, "sha": head_sha, "repo": head_repo},
            "base": {"label": f"{self.owner}:main", "ref": "main", "sha": "0" * 40, "repo": base_repo},
            "created_at": _now(),
            "updated_at": _now(),
            "closed_at": None,
            "merged_at": None,
        }
        self.pulls.append(pull)
        self.issues.add(number)
        return pull

    def push_pull(self, number: int, head_sha: str) -> None:
        """A new head commit on pull request ``number``."""
        with self._lock:
            pull = self._pull(number)
            pull["head"]["sha"] = head_sha
            pull["updated_at"] = _now()

    def close_pull(self, number: int, *, merged: bool = False) -> None:
        with self._lock:
            pull = self._pull(number)
            now = _now()
            pull.update(state="closed", updated_at=now, closed_at=now, merged_at=now if merged else None)

    def _pull(self, number: int) -> dict[str, Any]:
        return next(p for p in self.pulls if p["number"] == number)

    def add_comment(
        self, issue: int, body: str, *, login: str = "octocat", at: str | None = None
    ) -> dict[str, Any]:
        """A comment by ``login``; ``at`` backdates it (GitHub's timestamp form)."""
        with self._lock:
            comment = self._create_comment(issue, body, login)
            if at is not None:
                comment.update(created_at=at, updated_at=at)
            return comment

    def comments_on(self, issue: int) -> list[dict[str, Any]]:
        return [c for cid, c in self.comments.items() if self.comment_issue[cid] == issue]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PATCH")]

    # -------------------------------------------------------------- handlers

    def _create_comment(self, issue: int, body: str, login: str) -> dict[str, Any]:
        cid = next(self._ids)
        now = _now()
        comment = {
            "url": f"{self.api_url}/repos/{self.repository}/issues/comments/{cid}",
            "html_url": f"https://github.example/{self.repository}/pull/{issue}#issuecomment-{cid}",
            "issue_url": f"{self.api_url}/repos/{self.repository}/issues/{issue}",
            "id": cid,
            "node_id": f"IC_{cid}",
            "user": _user(login),
            "created_at": now,
            "updated_at": now,
            "author_association": "NONE" if login.endswith("[bot]") else "MEMBER",
            "body": body,
        }
        self.comments[cid] = comment
        self.comment_issue[cid] = issue
        return comment

    def answer(self, request: Request, login: str | None) -> tuple[int, dict[str, str], Any]:
        """Route one request; called with the lock held."""
        repo = f"/repos/{self.repository}"
        path, method = request.path, request.method
        if method == "POST" and (m := re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)):
            return self._installation_token(request, int(m.group(1)))
        if login is None:
            return 401, {}, {"message": "Bad credentials", "documentation_url": DOCS}
        if not path.startswith(repo):
            return _not_found()
        rest = path[len(repo) :]
        if self.git is not None and (answered := self.git.answer(request, rest, login)) is not None:
            return answered
        if rest == "" and method == "GET":
            return 200, {}, _repository(self.repository)
        if rest == "/pulls" and method == "GET":
            return self._list_pulls(request)
        if (m := re.fullmatch(r"/pulls/(\d+)", rest)) and method == "GET":
            pull = next((p for p in self.pulls if p["number"] == int(m.group(1))), None)
            if pull is None:
                return _not_found()
            return 200, {}, {**pull, "merged": pull["merged_at"] is not None}
        if (m := re.fullmatch(r"/issues/(\d+)", rest)) and method == "GET":
            return self._issue(int(m.group(1)))
        if rest == "/issues/comments" and method == "GET":
            return self._list_repository_comments(request)
        if m := re.fullmatch(r"/issues/(\d+)/comments", rest):
            number = int(m.group(1))
            if number not in self.issues:
                return _not_found()
            if method == "GET":
                return self._paginate(request, self.comments_on(number))
            if method == "POST":
                return 201, {}, self._create_comment(number, str(request.body["body"]), login)
        if m := re.fullmatch(r"/issues/comments/(\d+)(/reactions)?", rest):
            comment = self.comments.get(int(m.group(1)))
            if comment is None:
                return _not_found()
            if m.group(2):
                if method != "POST":
                    return _not_found()
                return self._react(comment, str(request.body["content"]), login)
            if method == "GET":
                return 200, {}, comment
            if method == "PATCH":
                if comment["user"]["login"] != login:
                    return (
                        403,
                        {},
                        {"message": "Must have admin rights to Repository.", "documentation_url": DOCS},
                    )
                comment["body"] = request.body["body"]
                comment["updated_at"] = _now()
                return 200, {}, comment
        if rest == "/check-runs" and method == "POST":
            return self._create_check_run(request.body)
        if m := re.fullmatch(r"/check-runs/(\d+)", rest):
            run = self.check_runs.get(int(m.group(1)))
            if run is None:
                return _not_found()
            if method == "PATCH":
                self._apply_check(run, request.body)
            return 200, {}, run
        if (m := re.fullmatch(r"/commits/([0-9a-f]{40})/check-runs", rest)) and method == "GET":
            name = request.query.get("check_name")
            runs = [
                r
                for r in reversed(self.check_runs.values())
                if r["head_sha"] == m.group(1) and (name is None or r["name"] == name)
            ]
            return self._paginate(request, runs, list_item="check_runs")
        if (m := re.fullmatch(r"/statuses/([0-9a-f]{40})", rest)) and method == "POST":
            status = {"id": next(self._ids), "sha": m.group(1), "creator": _user(login), **request.body}
            self.statuses.append(status)
            return 201, {}, status
        return _not_found()

    def _installation_token(self, request: Request, installation: int) -> tuple[int, dict[str, str], Any]:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or self.app_public_key is None:
            return 401, {}, {"message": "A JSON web token could not be decoded", "documentation_url": DOCS}
        try:
            claims = jwt.decode(auth[len("Bearer ") :], self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            return 401, {}, {"message": f"'Expiration time' claim ('exp') is invalid: {exc}"}
        if str(claims.get("iss")) != str(self.app_id) or installation != self.installation_id:
            return _not_found()
        token = f"ghs_installation_{len(self.installation_tokens) + 1}"
        self.installation_tokens.append(token)
        self.tokens[token] = "flywheel[bot]"
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {}, {"token": token, "expires_at": expires, "permissions": {"checks": "write"}}

    def _list_pulls(self, request: Request) -> tuple[int, dict[str, str], Any]:
        state = request.query.get("state", "open")
        head = request.query.get("head")
        pulls = [
            p
            for p in self.pulls
            if (state == "all" or p["state"] == state) and (head is None or p["head"]["label"] == head)
        ]
        sort = request.query.get("sort", "created")
        pulls.sort(key=lambda p: (p["updated_at"] if sort == "updated" else p["created_at"], p["number"]))
        if request.query.get("direction", "desc") == "desc":
            pulls = list(reversed(pulls))
        return self._paginate(request, pulls)

    def _issue(self, number: int) -> tuple[int, dict[str, str], Any]:
        if number not in self.issues:
            return _not_found()
        issue: dict[str, Any] = {
            "url": f"{self.api_url}/repos/{self.repository}/issues/{number}",
            "id": 7000 + number,
            "number": number,
            "state": "open",
            "title": f"Issue {number}",
            "user": _user("octocat"),
        }
        if any(p["number"] == number for p in self.pulls):
            issue["pull_request"] = {"url": f"{self.api_url}/repos/{self.repository}/pulls/{number}"}
        return 200, {}, issue

    def _list_repository_comments(self, request: Request) -> tuple[int, dict[str, str], Any]:
        since = request.query.get("since")
        comments = [c for c in self.comments.values() if since is None or c["updated_at"] >= _utc(since)]
        if request.query.get("sort", "created") == "updated":
            comments.sort(key=lambda c: (c["updated_at"], c["id"]))
        if request.query.get("direction", "asc") == "desc":
            comments.reverse()
        return self._paginate(request, comments)

    def _react(self, comment: dict[str, Any], content: str, login: str) -> tuple[int, dict[str, str], Any]:
        for reaction in self.reactions:
            same = reaction["comment_id"] == comment["id"] and reaction["content"] == content
            if same and reaction["user"]["login"] == login:
                return 200, {}, reaction
        reaction = {
            "id": next(self._ids),
            "node_id": "REA_x",
            "user": _user(login),
            "content": content,
            "created_at": _now(),
            "comment_id": comment["id"],
        }
        self.reactions.append(reaction)
        return 201, {}, reaction

    def _create_check_run(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if not body.get("name") or not re.fullmatch(r"[0-9a-f]{40}", str(body.get("head_sha", ""))):
            return 422, {}, {"message": "Invalid request.", "documentation_url": DOCS}
        rid = next(self._ids)
        run: dict[str, Any] = {
            "id": rid,
            "head_sha": body["head_sha"],
            "node_id": f"CR_{rid}",
            "external_id": str(body.get("external_id") or ""),
            "url": f"{self.api_url}/repos/{self.repository}/check-runs/{rid}",
            "html_url": f"https://github.example/{self.repository}/runs/{rid}",
            "status": "queued",
            "conclusion": None,
            "started_at": _now(),
            "completed_at": None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0},
            "name": body["name"],
            "app": {"id": self.app_id, "slug": "flywheel"},
            "pull_requests": [],
        }
        self._apply_check(run, body)
        self.check_runs[rid] = run
        return 201, {}, run

    @staticmethod
    def _apply_check(run: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("status", "conclusion", "completed_at", "details_url", "external_id"):
            if key in body:
                run[key] = body[key]
        if "conclusion" in body:
            run["status"] = "completed"
        if "output" in body:
            run["output"] = {**run["output"], **body["output"]}

    def _paginate(
        self, request: Request, items: list[dict[str, Any]], *, list_item: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = int(request.query.get("page", "1"))
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(number: int, rel: str) -> str:
            query = {**request.query, "page": str(number), "per_page": str(per_page)}
            return f'<{self.api_url}{request.path}?{urlencode(query)}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = {"Link": ", ".join(links)} if links else {}
        body: Any = {"total_count": len(items), list_item: chunk} if list_item else chunk
        return 200, headers, body


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        if self.github.down:  # the service is unreachable: drop the connection without an answer
            self.close_connection = True
            self.rfile.read1(65536)
            return
        super().handle_one_request()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        github = self.github
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = url.path.removeprefix(PREFIX) if url.path.startswith(PREFIX + "/") else url.path
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(
            self.command, path, {k: v[-1] for k, v in parse_qs(url.query).items()}, body, headers
        )
        with github._lock:
            github.requests.append(request)
            extra: dict[str, str] = {}
            failure = next((f for f in github._failures if f.method in (None, self.command)), None)
            if failure is not None:
                github._failures.remove(failure)
                status, extra = failure.status, failure.headers
                answer: Any = {"message": failure.message, "documentation_url": DOCS}
            elif not url.path.startswith(PREFIX + "/"):
                status, answer = 404, {"message": "Not Found", "documentation_url": DOCS}
            else:
                auth = headers.get("authorization", "")
                login = github.tokens.get(auth.split(" ", 1)[-1]) if auth.startswith("token ") else None
                status, extra, answer = github.answer(request, login)
            github.remaining = max(github.remaining - 1, 0)
            rate = {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(github.remaining),
                "X-RateLimit-Reset": str(github.reset_at),
                "X-RateLimit-Used": str(RATE_LIMIT - github.remaining),
                "X-RateLimit-Resource": "core",
            }
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {**rate, **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.send_header("X-GitHub-Request-Id", f"FAKE:{len(github.requests)}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _not_found() -> tuple[int, dict[str, str], Any]:
    return 404, {}, {"message": "Not Found", "documentation_url": DOCS}


def _user(login: str) -> dict[str, Any]:
    bot = login.endswith("[bot]")
    return {
        "login": login,
        "id": zlib.crc32(login.encode()) % 10_000_000,
        "node_id": "U_x",
        "type": "Bot" if bot else "User",
        "site_admin": False,
    }


def _repository(full_name: str, *, repo_id: int = 77) -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {
        "id": repo_id,
        "node_id": "R_x",
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": _user(owner),
        "default_branch": "main",
        "url": f"https://api.github.example/repos/{full_name}",
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(stamp: str) -> str:
    """An ISO 8601 time (``since=``, which PyGithub sends with an offset) in GitHub's own form."""
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------ webhook payloads

def reference_payload(name: str) -> dict[str, Any]:
    """A real GitHub webhook payload from ../shared/reference/github-webhooks/; skips or fails without it."""
    path = reference(f"github-webhooks/{name}.payload.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def pull_request_event(
    action: str,
    *,
    number: int,
    head_ref: str,
    head_sha: str,
    author: str,
    fork: bool = False,
    merged: bool = False,
    updated_at: str = "2024-05-01T12:00:00Z",
) -> dict[str, Any]:
    """GitHub's ``pull_request`` payload (the real example, retargeted); ``fork`` puts the head elsewhere."""
    payload = reference_payload("pull_request.opened" if action != "closed" else "pull_request.closed")
    payload = copy.deepcopy(payload)
    payload["action"] = action
    payload["number"] = number
    pull = payload["pull_request"]
    pull.update(
        number=number, updated_at=updated_at, merged=merged, state="closed" if action == "closed" else "open"
    )
    pull["user"]["login"] = author
    pull["head"].update(ref=head_ref, sha=head_sha, label=f"{author}:{head_ref}")
    if fork:
        head_repo = copy.deepcopy(pull["base"]["repo"])
        head_repo.update(id=head_repo["id"] + 1, full_name=f"{author}/{head_repo['name']}")
        pull["head"]["repo"] = head_repo
    else:
        pull["head"]["repo"] = copy.deepcopy(pull["base"]["repo"])
    return payload


def issue_comment_event(
    body: str, *, login: str, number: int, comment_id: int = 555, pull: bool = True, action: str = "created"
) -> dict[str, Any]:
    """GitHub's ``issue_comment`` payload (the real example) with our body, author and issue."""
    payload = copy.deepcopy(reference_payload("issue_comment.created"))
    payload["action"] = action
    payload["issue"]["number"] = number
    if pull:
        payload["issue"]["pull_request"] = {
            "url": f"https://api.github.com/repos/octo-org/models/pulls/{number}",
            "html_url": f"https://github.com/octo-org/models/pull/{number}",
            "diff_url": None,
            "patch_url": None,
        }
    else:
        payload["issue"].pop("pull_request", None)
    payload["comment"].update(id=comment_id, body=body)
    payload["comment"]["user"].update(login=login, type="Bot" if login.endswith("[bot]") else "User")
    payload["sender"].update(login=login, type="Bot" if login.endswith("[bot]") else "User")
    return payload

"""A local HTTP server that speaks enough of Slack's Web API for slack-sdk's real ``WebClient``.

Tests point ``WebClient(base_url=fake.api_url)`` at it. It serves
``chat.postMessage`` and ``chat.update`` as Slack does: form or JSON bodies,
a bearer token, answers ``{"ok": true, "channel": ..., "ts": ...}`` with the
channel's id, ``{"ok": false, "error": ...}`` for unknown channels, bad
tokens and unknown messages; a message's ``metadata`` (``event_type`` and
``event_payload``, a JSON object or its text in a form body) is kept, and an
update without one keeps the one it had. The reads slack-sdk makes with GET
are served with Slack's pagination (``limit``, ``cursor``,
``response_metadata.next_cursor``): ``conversations.history`` (a channel's
top-level messages, newest first), ``conversations.replies`` (a thread,
its parent first, then the replies oldest first) and ``conversations.list``
(the channels, by id and name without ``#``); a message's ``metadata`` is in
them only with ``include_all_metadata``, as on Slack. A method's access can
be refused (:meth:`FakeSlack.refuse`, e.g. ``missing_scope``). Failures can
be scripted (:meth:`FakeSlack.fail`: for instance HTTP 429 ``ratelimited``
with ``Retry-After``), and the whole
server can be stopped and started again on the same port to play an outage.
``response_url``s (:meth:`FakeSlack.response_url`) point back at it and
record what was posted to them.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Call", "Failure", "FakeSlack", "Posted"]

TOKEN = "xoxb-test-token"
Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


@dataclass
class Call:
    """One request the server answered: the Web API method (or ``response_url``) and its arguments."""

    method: str
    args: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Posted:
    """A message as it stands in a channel now."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: int = 0
    metadata: dict[str, Any] | None = None

    def as_slack(self, *, with_metadata: bool) -> dict[str, Any]:
        """The message as Slack's reads return it."""
        found: dict[str, Any] = {"type": "message", "bot_id": "B0FLYWHEEL", "text": self.text, "ts": self.ts}
        if self.blocks:
            found["blocks"] = self.blocks
        if self.thread_ts is not None:
            found["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata is not None:
            found["metadata"] = self.metadata
        return found


@dataclass
class Failure:
    status: int
    error: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeSlack:
    """The fake Slack API; use as a context manager (started on enter, stopped on exit)."""

    def __init__(self, channels: dict[str, str] | None = None, *, token: str = TOKEN) -> None:
        self.channels = channels or {"#ml-releases": "C0RELEASES"}
        self.token = token
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Posted] = {}
        self.failures: list[Failure] = []
        self.refused: dict[str, str] = {}  # method -> the error it answers
        self.lock = threading.Lock()
        self._ts = itertools.count(1)
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------- lifecycle

    def start(self) -> FakeSlack:
        fake = self

        class Handler(_Handler):
            slack = fake

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def response_url(self, name: str = "T0TEAM/1234/abcd") -> str:
        return f"{self.base_url}/actions/{name}"

    # ----------------------------------------------------------- scripting

    def fail(self, status: int, error: str, *, times: int = 1, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self.lock:
            self.failures.extend(Failure(status, error, headers) for _ in range(times))

    def refuse(self, method: str, error: str = "missing_scope") -> None:
        """Answer ``method`` with ``{"ok": false, "error": error}`` from now on (a scope the token lacks)."""
        with self.lock:
            self.refused[method] = error

    def post_directly(self, channel: str, text: str, *, metadata: dict[str, Any] | None = None) -> Posted:
        """A message someone else posted (not through the API's client under test)."""
        answer = self._post({"channel": channel, "text": text, "metadata": metadata})
        data = json.loads(answer[2])
        with self.lock:
            return self.messages[(data["channel"], data["ts"])]

    # ------------------------------------------------------------ queries

    def api_calls(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def parents(self) -> list[Posted]:
        with self.lock:
            return [m for m in self.messages.values() if m.thread_ts is None]

    def replies(self, parent: Posted) -> list[Posted]:
        with self.lock:
            found = [m for m in self.messages.values() if m.thread_ts == parent.ts]
        return sorted(found, key=lambda m: float(m.ts))

    # ----------------------------------------------------------- serving

    def handle(self, path: str, headers: dict[str, str], body: bytes, *, query: str = "") -> Answer:
        content_type = headers.get("content-type", "")
        if path.startswith("/actions/"):
            args = json.loads(body or b"{}")
            with self.lock:
                self.calls.append(Call("response_url", args, headers))
                failure = self.failures.pop(0) if self.failures else None
            if failure is not None:
                return failure.status, failure.headers, failure.error.encode()
            return 200, {"Content-Type": "text/plain"}, b"ok"
        if not path.startswith("/api/"):
            return 404, {}, b"not found"
        method = path[len("/api/") :]
        if content_type.startswith("application/json"):
            args = json.loads(body or b"{}")
        else:
            args = {k: v[0] for k, v in parse_qs(body.decode() or query).items()}
            for name in ("blocks", "metadata"):
                if isinstance(args.get(name), str):
                    args[name] = json.loads(args[name])
        with self.lock:
            self.calls.append(Call(method, args, headers))
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            return _json(failure.status, {"ok": False, "error": failure.error}, failure.headers)
        if headers.get("authorization") != f"Bearer {self.token}":
            return _json(200, {"ok": False, "error": "invalid_auth"})
        if method in self.refused:
            return _json(200, {"ok": False, "error": self.refused[method]})
        if method == "chat.postMessage":
            return self._post(args)
        if method == "chat.update":
            return self._update(args)
        if method == "conversations.history":
            return self._history(args)
        if method == "conversations.replies":
            return self._replies(args)
        if method == "conversations.list":
            return self._list(args)
        return _json(200, {"ok": False, "error": "unknown_method"})

    def _channel(self, name: str) -> str | None:
        if name in self.channels.values():
            return name
        return self.channels.get(name)

    def _post(self, args: dict[str, Any]) -> Answer:
        channel = self._channel(str(args.get("channel", "")))
        if channel is None:
            return _json(200, {"ok": False, "error": "channel_not_found"})
        thread_ts = args.get("thread_ts")
        with self.lock:
            if thread_ts is not None and (channel, thread_ts) not in self.messages:
                return _json(200, {"ok": False, "error": "thread_not_found"})
            ts = f"1700000000.{next(self._ts):06d}"
            blocks = list(args.get("blocks") or [])
            message = Posted(channel, ts, str(args.get("text", "")), blocks, thread_ts)
            message.metadata = args.get("metadata") or None
            self.messages[(channel, ts)] = message
        return _json(200, {"ok": True, "channel": channel, "ts": ts, "message": {"text": message.text}})

    def _update(self, args: dict[str, Any]) -> Answer:
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if channel not in self.channels.values():
            return _json(200, {"ok": False, "error": "channel_not_found"})
        with self.lock:
            message = self.messages.get((channel, ts))
            if message is None:
                return _json(200, {"ok": False, "error": "message_not_found"})
            message.text = str(args.get("text", ""))
            message.blocks = list(args.get("blocks") or [])
            message.metadata = args.get("metadata") or message.metadata
            message.edits += 1
        return _json(200, {"ok": True, "channel": channel, "ts": ts, "text": message.text})

    def _history(self, args: dict[str, Any]) -> Answer:
        channel = str(args.get("channel", ""))
        if channel not in self.channels.values():  # an id, never a #name: as on Slack
            return _json(200, {"ok": False, "error": "channel_not_found"})
        with self.lock:
            found = [m for m in self.messages.values() if m.channel == channel and m.thread_ts is None]
        found.sort(key=lambda m: float(m.ts), reverse=True)
        return self._page(
            args, "messages", [m.as_slack(with_metadata=_flag(args, "include_all_metadata")) for m in found]
        )

    def _replies(self, args: dict[str, Any]) -> Answer:
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if channel not in self.channels.values():
            return _json(200, {"ok": False, "error": "channel_not_found"})
        with self.lock:
            parent = self.messages.get((channel, ts))
            if parent is None:
                return _json(200, {"ok": False, "error": "thread_not_found"})
            replies = sorted(
                (m for m in self.messages.values() if m.channel == channel and m.thread_ts == ts),
                key=lambda m: float(m.ts),
            )
        with_metadata = _flag(args, "include_all_metadata")
        thread = [parent.as_slack(with_metadata=with_metadata)] + [
            r.as_slack(with_metadata=with_metadata) for r in replies
        ]
        return self._page(args, "messages", thread)

    def _list(self, args: dict[str, Any]) -> Answer:
        channels = [
            {"id": cid, "name": name.removeprefix("#"), "is_channel": True, "is_archived": False}
            for name, cid in self.channels.items()
        ]
        return self._page(args, "channels", channels)

    @staticmethod
    def _page(args: dict[str, Any], name: str, items: list[dict[str, Any]]) -> Answer:
        """One page of ``items`` as Slack paginates: ``limit`` (100 by default), an opaque ``cursor``."""
        limit = int(args.get("limit") or 100)
        start = (
            int(base64.b64decode(str(args["cursor"])).decode().removeprefix("start:"))
            if args.get("cursor")
            else 0
        )
        page = items[start : start + limit]
        more = start + limit < len(items)
        cursor = base64.b64encode(f"start:{start + limit}".encode()).decode() if more else ""
        return _json(
            200, {"ok": True, name: page, "has_more": more, "response_metadata": {"next_cursor": cursor}}
        )


def _flag(args: dict[str, Any], name: str) -> bool:
    return str(args.get(name, "")).lower() in ("1", "true")


def _json(status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    content = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return status, content, json.dumps(data).encode()


class _Handler(BaseHTTPRequestHandler):
    slack: FakeSlack
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        path, _, query = self.path.partition("?")
        status, extra, data = self.slack.handle(path, headers, body, query=query)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

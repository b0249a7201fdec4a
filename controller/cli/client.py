"""The CLI's client of a shared Flywheel's dashboard API (``--server URL``, the token in ``FLYWHEEL_TOKEN``).

The decision commands (:mod:`controller.cli.rollouts`) post their requests
with it, and the read commands (:mod:`controller.cli.status`,
:mod:`controller.cli.registry`) read the documents they would print. Every
failure is one line for people: ``cannot reach URL: why``, or ``URL answered
404: no model 'x'`` with the server's own reason.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import click
import httpx

__all__ = ["Server"]

_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_TOKEN_HELP = "FLYWHEEL_TOKEN (flywheel ui token create)"


class Server:
    """The dashboard at ``url`` (``flywheel ui``'s, or ``flywheel serve``'s ``/ui``), asked as ``token``."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token or None

    @classmethod
    def from_environment(cls, url: str) -> Server:
        """The dashboard at ``url`` with the token in ``FLYWHEEL_TOKEN``, if any."""
        return cls(url, os.environ.get("FLYWHEEL_TOKEN"))

    def read(self, path: str, params: Mapping[str, str | int | None] | None = None) -> Any:
        """``GET /api/v1/<path>``'s JSON document; the token is sent when there is one."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self._call("GET", path, params=query)[1]

    def act(self, path: str, body: Mapping[str, object]) -> tuple[int, dict[str, Any]]:
        """``POST /api/v1/<path>`` with ``body``: the status (200 or 403) and the JSON object answered.

        Acting needs a token: without one, nothing is sent.
        """
        if self.token is None:
            raise click.ClickException(f"--server needs a token in {_TOKEN_HELP}")
        status, data = self._call("POST", path, json=dict(body), answers=(200, 403))
        return status, data if isinstance(data, dict) else {}

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: dict[str, object] | None = None,
        answers: Collection[int] = (200,),
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            answer = httpx.request(
                method,
                f"{self.url}/api/v1/{path}",
                params=params,
                json=json,
                headers=headers,
                timeout=_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.url}: {_why(exc)}") from exc
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.status_code in answers and data is not None:
            return answer.status_code, data
        raise click.ClickException(f"{self.url} answered {answer.status_code}: {self._problem(answer, data)}")

    def _problem(self, answer: httpx.Response, data: Any) -> str:
        said = data.get("error") or data.get("message") if isinstance(data, dict) else None
        if answer.status_code == 401 and answer.request.method == "GET":
            if self.token is None:
                return f"reading it needs a token in {_TOKEN_HELP}"
            return f"the token in FLYWHEEL_TOKEN was refused ({said or 'unknown or revoked'})"
        if said:
            return str(said)
        if data is None:
            return f"not the dashboard's API (HTTP {answer.reason_phrase or answer.status_code}, no JSON)"
        return f"HTTP {answer.status_code}"


def _why(exc: httpx.HTTPError) -> str:
    """What went wrong, in a few words: the exception's own, else its kind."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Who asks the dashboard, and how they proved it: a local sign-in, a trusted proxy's header, a token.

:func:`controller.ui.app.create_app` asks :meth:`Access.person` on every
request. Three ways in, in this order:

* ``Authorization: Bearer <token>``: a token ``flywheel ui token create``
  issued (its hash looked up by ``tokens``), for the CLI's ``--server``;
* the header an authenticating proxy (oauth2-proxy and the like) sets,
  ``X-Forwarded-User`` unless configured, believed only when the request's
  peer address is in one of the trusted proxies' networks; from anywhere
  else the header is ignored;
* the session of a local sign-in: ``flywheel ui`` prints a one-time sign-in
  address with a random token (:class:`SignIn`), and whoever opens it is
  signed in, in a signed session cookie, as the operating-system user who
  started the dashboard.

Who the person is in Flywheel, and what they may do, is not decided here:
the name goes to :class:`~controller.engine.commands.Commands` with the
channel ``dashboard``, which maps it through ``identities`` in main's policy
and applies the same checks as every other channel.

Forms are protected by a synchronizer token (:func:`csrf_token`,
:func:`csrf_ok`) kept in the session: a form post without it, or with
another, changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from starlette.requests import HTTPConnection

__all__ = [
    "SECRET_FILE",
    "Access",
    "Network",
    "Person",
    "ReadAccess",
    "SignIn",
    "csrf_ok",
    "csrf_token",
    "session_secret",
    "token_digest",
]

ReadAccess = Literal["open", "signed-in"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SECRET_FILE = "ui-secret"  # in the state directory: signs the dashboard's session cookies
_CSRF = "csrf"
_USER = "user"


@dataclass(frozen=True)
class Person:
    """Who asks, as they proved it: ``via`` is ``sign-in``, ``proxy`` or ``token``."""

    name: str
    via: Literal["sign-in", "proxy", "token"]


class SignIn:
    """The one-time local sign-in: a random token that signs in as ``user`` once, then never again."""

    def __init__(self, user: str, token: str | None = None) -> None:
        self.user = user
        self.token = token or secrets.token_urlsafe(32)
        self._used = False
        self._lock = threading.Lock()

    def use(self, token: str) -> str | None:
        """The user this sign-in is for, the first time the right token is given; ``None`` otherwise."""
        with self._lock:
            if self._used or not hmac.compare_digest(token.encode(), self.token.encode()):
                return None
            self._used = True
            return self.user


def token_digest(token: str) -> str:
    """How an API token is kept at rest: the hex SHA-256 of it (tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Access:
    """Who may read, and how people prove who they are.

    ``read``: ``open`` (anyone who reaches the dashboard reads it) or
    ``signed-in`` (only a person known by one of the ways in).
    ``trusted_proxies``: the networks whose ``user_header`` is believed.
    ``tokens``: the person an API token's digest (:func:`token_digest`) was issued to, if any.
    """

    read: ReadAccess = "open"
    trusted_proxies: tuple[Network, ...] = ()
    user_header: str = "X-Forwarded-User"
    sign_in: SignIn | None = None
    tokens: Callable[[str], str | None] = field(default=lambda digest: None)

    def person(self, request: HTTPConnection) -> Person | None:
        """Who ``request`` comes from, or ``None`` when they proved nothing."""
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            user = self.tokens(token_digest(token.strip()))
            return Person(user, "token") if user else None
        if self.trusted(request):
            asserted = request.headers.get(self.user_header, "")
            if asserted:
                return Person(asserted, "proxy")
        user = request.session.get(_USER) if "session" in request.scope else None
        return Person(user, "sign-in") if isinstance(user, str) and user else None

    def trusted(self, request: HTTPConnection) -> bool:
        """Whether ``request``'s peer is one of the trusted proxies."""
        if request.client is None or not self.trusted_proxies:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self.trusted_proxies)

    def refused_token(self, request: HTTPConnection) -> bool:
        """Whether ``request`` sends a bearer token nobody holds (unknown, revoked): refused even to read."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return (
            scheme.lower() == "bearer"
            and bool(token.strip())
            and not self.tokens(token_digest(token.strip()))
        )

    def may_read(self, request: HTTPConnection) -> bool:
        return self.read == "open" or self.person(request) is not None

    def sign_in_as(self, request: HTTPConnection, token: str) -> str | None:
        """Sign the session in with the one-time ``token``; the user it signed in as, or ``None``."""
        user = self.sign_in.use(token) if self.sign_in is not None else None
        if user is not None:
            request.session.clear()  # a fresh session, and a fresh form token with it
            request.session[_USER] = user
        return user


def csrf_token(request: HTTPConnection) -> str:
    """The session's form token, made on first use; every form of the dashboard carries it."""
    token = request.session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[_CSRF] = token
    return token


def csrf_ok(request: HTTPConnection, given: object) -> bool:
    """Whether ``given`` (a form's ``csrf`` field) is this session's form token."""
    expected = request.session.get(_CSRF)
    if not isinstance(given, str) or not isinstance(expected, str) or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def session_secret(configured: str | None, state_dir: Path | None) -> str:
    """The key that signs session cookies: ``configured``, else the state directory's, made once (mode 0600).

    Without either, a key for this process only (sessions end when it stops).
    """
    if configured:
        return configured
    if state_dir is None:
        return secrets.token_urlsafe(32)
    path = state_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        secret = secrets.token_urlsafe(32)
        out.write(secret + "\n")
    return secret


def networks(texts: Sequence[str]) -> tuple[Network, ...]:
    """``texts`` (CIDRs or addresses) as networks; a malformed one raises ``ValueError`` naming it."""
    found = []
    for text in texts:
        try:
            found.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not an address or a CIDR network") from None
    return tuple(found)

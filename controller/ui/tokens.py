"""API tokens of the dashboard: issued to a person, kept only as a hash, looked up on each request.

``flywheel ui token create NAME --as PERSON`` calls :func:`issue_token`
(the token is shown once and never stored: the store keeps its SHA-256
under ``ui-token:<hash>``, and the name under ``ui-token-name:<name>`` so a
name is issued once); ``flywheel ui token revoke NAME`` calls
:func:`revoke_token`. The dashboard's :class:`~controller.ui.access.Access`
asks :func:`token_user` who a bearer token's hash was issued to. Issuing and
revoking are audited. The person is a name the policy's identities map, as
for any other way in; what they may do is decided per request by main's policy.
"""

from __future__ import annotations

import json
import secrets
from typing import Protocol, Unpack

from controller.backends.store import AuditEntry, Meta, NewAuditEntry, Transactions
from controller.ui.access import token_digest

__all__ = ["TokenRecords", "TokenTaken", "issue_token", "revoke_token", "token_user"]

_BY_HASH = "ui-token:"
_BY_NAME = "ui-token-name:"


class TokenTaken(ValueError):
    """A token of that name was issued already."""


class TokenRecords(Meta, Transactions, Protocol):
    """Where tokens are kept: the store's settings, written in one transaction with the audit entry."""

    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry: ...


def issue_token(store: TokenRecords, *, name: str, user: str, by: str) -> str:
    """A new random token for ``user``, named ``name``; issued by ``by`` (audited). Shown once: keep it."""
    if store.get_meta(_BY_NAME + name):
        raise TokenTaken(f"a token named {name!r} exists already; revoke it first or choose another name")
    token = secrets.token_urlsafe(32)
    digest = token_digest(token)
    with store.transaction():
        store.set_meta(_BY_HASH + digest, json.dumps({"name": name, "user": user}))
        store.set_meta(_BY_NAME + name, digest)
        store.append_audit(actor=by, action="ui.token.issued", detail={"name": name, "user": user})
    return token


def revoke_token(store: TokenRecords, *, name: str, by: str) -> bool:
    """Revoke the token named ``name`` (audited); ``False`` when there is none."""
    digest = store.get_meta(_BY_NAME + name)
    if not digest:
        return False
    with store.transaction():
        store.set_meta(_BY_HASH + digest, "")
        store.set_meta(_BY_NAME + name, "")
        store.append_audit(actor=by, action="ui.token.revoked", detail={"name": name})
    return True


def token_user(store: Meta, digest: str) -> str | None:
    """Who the token with this hash was issued to, or ``None`` (unknown or revoked)."""
    found = store.get_meta(_BY_HASH + digest)
    if not found:
        return None
    user = json.loads(found).get("user")
    return user if isinstance(user, str) and user else None

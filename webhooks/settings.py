"""Settings of the webhook service, loaded once from the environment at start-up.

The service calls :meth:`WebhookSettings.from_env` before it opens a socket;
a missing or empty secret raises :class:`SettingsError`, so the service
refuses to start rather than accept deliveries it cannot verify.

Environment variables:

``FLYWHEEL_GITHUB_WEBHOOK_SECRET``
    The secret configured on the GitHub webhook (required). Taken exactly as
    given: it is never split or trimmed, so any character may appear in it.
``FLYWHEEL_GITHUB_WEBHOOK_SECRET_PREVIOUS``
    Optional. During a rotation, the old secret, still accepted until every
    sender uses the new one; unset it afterwards.
``FLYWHEEL_SLACK_SIGNING_SECRET``
    Optional. The signing secret of the Slack app ("Basic Information" →
    "App Credentials"). When set, ``POST /hooks/slack/actions`` is mounted
    and verifies every request with it; when unset, Slack is not served at
    all. Set but empty is refused, like the GitHub secret.
``FLYWHEEL_WEBHOOK_MAX_BODY_BYTES``
    Optional. The largest body accepted, in bytes (default 25 MiB, GitHub's
    own maximum payload size).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ENV_MAX_BODY_BYTES",
    "ENV_PREVIOUS_SECRET",
    "ENV_SECRET",
    "ENV_SLACK_SIGNING_SECRET",
    "SettingsError",
    "WebhookSettings",
]

DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
ENV_SECRET = "FLYWHEEL_GITHUB_WEBHOOK_SECRET"
ENV_PREVIOUS_SECRET = "FLYWHEEL_GITHUB_WEBHOOK_SECRET_PREVIOUS"
ENV_MAX_BODY_BYTES = "FLYWHEEL_WEBHOOK_MAX_BODY_BYTES"
ENV_SLACK_SIGNING_SECRET = "FLYWHEEL_SLACK_SIGNING_SECRET"


class SettingsError(ValueError):
    """The webhook service is not configured well enough to start."""


@dataclass(frozen=True)
class WebhookSettings:
    """What the receiver needs: the secrets deliveries are signed with, and the body size limit.

    ``github_secrets`` holds the current secret first, then any still accepted
    during a rotation. ``slack_signing_secret`` is ``None`` when Slack is
    not used. Secrets are left out of ``repr``.
    """

    github_secrets: tuple[str, ...] = field(repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    slack_signing_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.github_secrets or any(not s.strip() for s in self.github_secrets):
            raise SettingsError(
                f"the GitHub webhook secret is missing or empty: set {ENV_SECRET} "
                "to the secret configured on the webhook; refusing to accept unverifiable deliveries"
            )
        if self.max_body_bytes <= 0:
            raise SettingsError(f"the body size limit must be positive, not {self.max_body_bytes}")
        if self.slack_signing_secret is not None and not self.slack_signing_secret.strip():
            raise SettingsError(
                f"the Slack signing secret is empty: set {ENV_SLACK_SIGNING_SECRET} to the app's "
                "signing secret, or unset it to serve no Slack requests"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        """Read the settings from ``environ`` (default :data:`os.environ`); raise :class:`SettingsError`."""
        env = os.environ if environ is None else environ
        secret = env.get(ENV_SECRET, "")
        if not secret.strip():
            raise SettingsError(
                f"{ENV_SECRET} is {'empty' if ENV_SECRET in env else 'not set'}: set it to the secret "
                "configured on the GitHub webhook; refusing to start without a way to verify deliveries"
            )
        secrets = [secret]
        previous = env.get(ENV_PREVIOUS_SECRET, "")
        if previous.strip() and previous != secret:
            secrets.append(previous)
        raw_limit = env.get(ENV_MAX_BODY_BYTES, "").strip()
        limit = DEFAULT_MAX_BODY_BYTES
        if raw_limit:
            try:
                limit = int(raw_limit)
            except ValueError:
                raise SettingsError(
                    f"{ENV_MAX_BODY_BYTES} must be a number of bytes, not {raw_limit!r}"
                ) from None
        slack_secret = env.get(ENV_SLACK_SIGNING_SECRET)
        if slack_secret is not None and not slack_secret.strip():
            raise SettingsError(
                f"{ENV_SLACK_SIGNING_SECRET} is empty: set it to the Slack app's signing secret, "
                "or unset it to serve no Slack requests"
            )
        return cls(github_secrets=tuple(secrets), max_body_bytes=limit, slack_signing_secret=slack_secret)

"""The settings of one Flywheel process: a tree of frozen dataclasses, read once at start-up.

``flywheel run`` and ``flywheel serve`` parse their arguments into a
:class:`ControllerSettings` (and :class:`LocalSettings`) and call
:func:`load_settings`, which reads everything else from the environment
once and returns one :class:`Settings`; the composition root
(:func:`controller.app.build_controller`) builds the controller from it and
``flywheel serve`` gives the webhook service its part. Nothing else reads the
controller's ``FLYWHEEL_*`` variables: backends take plain values and their
own sub-settings. A malformed value raises :class:`SettingsError` with one
line that names the variable.

Environment variables (README.md, "Settings", "GitHub" and "Slack"):

``FLYWHEEL_GITHUB_REPOSITORY``
    ``owner/name``; turns GitHub on as the review surface, with
    ``FLYWHEEL_GITHUB_TOKEN`` or a GitHub App (``FLYWHEEL_GITHUB_APP_ID``,
    ``FLYWHEEL_GITHUB_INSTALLATION_ID``, ``FLYWHEEL_GITHUB_PRIVATE_KEY`` or
    ``FLYWHEEL_GITHUB_PRIVATE_KEY_FILE``); ``FLYWHEEL_GITHUB_API_URL`` and
    ``FLYWHEEL_GITHUB_POLL_SECONDS`` are optional (:class:`GitHubSettings`).
``FLYWHEEL_SLACK_BOT_TOKEN``, ``FLYWHEEL_SLACK_API_URL``
    A bot token turns Slack notifications on (:class:`SlackSettings`).
``FLYWHEEL_GITHUB_WEBHOOK_SECRET`` and the others of :class:`WebhookSettings`
    The webhook service's, read by ``flywheel serve`` only. A secret is
    taken exactly as given: never split or trimmed.
``FLYWHEEL_DATA_CHECK_SECONDS``
    How often data inputs' versions are read for ``triggers.dataChange``:
    ``flywheel run``'s ``--data-check-interval``, read by click into
    :attr:`ControllerSettings.data_check_seconds`.
``FLYWHEEL_VENV_CACHE``
    Where virtualenvs are built when no state directory's cache is given
    (the demo): :func:`default_venv_cache`.
``FLYWHEEL_DATABASE_URL``
    The cluster home's: a PostgreSQL URL (``postgresql+psycopg://user:pw@host/db``)
    that holds every store instead of SQLite in the state directory
    (:func:`database_url`; ``flywheel run``, ``serve`` and every command that
    reads the state).
``FLYWHEEL_LEADER_ELECTION`` and ``FLYWHEEL_LEASE_*`` (``NAME``, ``NAMESPACE``, ``SECONDS``)
    Which replica of several controllers leads (:class:`LeaderSettings`);
    ``FLYWHEEL_INSTANCE`` (else ``HOSTNAME``) names this replica.
``FLYWHEEL_ARGO_ARTIFACTS_DIR``
    The cluster home's: where this controller sees the artifacts
    PersistentVolumeClaims, each at ``<dir>/<claimName>`` (:class:`ArgoSettings`).
``FLYWHEEL_KUBECONFIG``, ``FLYWHEEL_REGISTRY_AUTH_FILE``
    The cluster home's: the kubeconfig of the cluster whose API the
    controller calls (image build Jobs, KServe, the leader's Lease; unset:
    the controller pod's in-cluster config) and the
    registry credentials (a ``.dockerconfigjson`` file) the controller asks
    the registry with (:class:`ArgoSettings`).
    The bearer token of an Environment's Argo Server is read from the variable
    or file its spec names, at each use (:func:`argo_token`).
``FLYWHEEL_UI_READ``, ``FLYWHEEL_UI_TRUSTED_PROXIES``, ``FLYWHEEL_UI_USER_HEADER``, ``FLYWHEEL_UI_SECRET``
    Who may read the dashboard and how people prove who they are
    (:class:`UiSettings`, read by ``flywheel ui`` and ``flywheel serve``).
``FLYWHEEL_SERVER``, ``FLYWHEEL_TOKEN``
    A shared Flywheel's dashboard that the decision and read commands ask, and the API
    token they send (read by those commands: ``--server``).
``FLYWHEEL_HEALTH_PORT``
    The port of the controller's ``GET /healthz`` (0 or unset: none), served
    by ``flywheel run`` and ``flywheel serve`` (:class:`HealthSettings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from controller.settings.cluster import (
    ENV_ARGO_ARTIFACTS_DIR,
    ENV_DATABASE_URL,
    ENV_DRIFT_LOGGER_URL,
    ENV_HEALTH_PORT,
    ENV_KUBECONFIG,
    ENV_LEADER_ELECTION,
    ENV_REGISTRY_AUTH_FILE,
    ArgoSettings,
    DriftLoggerSettings,
    HealthSettings,
    LeaderSettings,
    argo_token,
    database_url,
)
from controller.settings.errors import SettingsError

if TYPE_CHECKING:
    from github import Auth

__all__ = [
    "DEFAULT_GITHUB_API_URL",
    "DEFAULT_MAX_BODY_BYTES",
    "ENV_ARGO_ARTIFACTS_DIR",
    "ENV_DATABASE_URL",
    "ENV_DRIFT_LOGGER_URL",
    "ENV_DRIFT_TOKEN",
    "ENV_HEALTH_PORT",
    "ENV_KUBECONFIG",
    "ENV_LEADER_ELECTION",
    "ENV_MAX_BODY_BYTES",
    "ENV_PREVIOUS_SECRET",
    "ENV_REGISTRY_AUTH_FILE",
    "ENV_SECRET",
    "ENV_SLACK_SIGNING_SECRET",
    "ArgoSettings",
    "CheckMode",
    "ControllerSettings",
    "DriftLoggerSettings",
    "GitHubSettings",
    "HealthSettings",
    "LeaderSettings",
    "LocalSettings",
    "Settings",
    "SettingsError",
    "SlackSettings",
    "WebhookSettings",
    "argo_token",
    "database_url",
    "default_venv_cache",
    "load_settings",
]

DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
ENV_SECRET = "FLYWHEEL_GITHUB_WEBHOOK_SECRET"
ENV_PREVIOUS_SECRET = "FLYWHEEL_GITHUB_WEBHOOK_SECRET_PREVIOUS"
ENV_MAX_BODY_BYTES = "FLYWHEEL_WEBHOOK_MAX_BODY_BYTES"
ENV_SLACK_SIGNING_SECRET = "FLYWHEEL_SLACK_SIGNING_SECRET"
ENV_DRIFT_TOKEN = "FLYWHEEL_DRIFT_TOKEN"
# Read by the test suite only (tests/fixtures/required.py): set, a test whose reference data or program is
# missing fails instead of being skipped. CI sets it.
ENV_TEST_REQUIRE_ALL = "FLYWHEEL_TEST_REQUIRE_ALL"

CheckMode = Literal["check-runs", "statuses"]


# ------------------------------------------------------------------ the tree


@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    """What the controller watches and how often it looks (``flywheel run``/``serve``'s options)."""

    repo: str
    state_dir: Path = Path(".flywheel")
    interval_seconds: float = 5.0
    max_active_runs: int = 2
    release_branch: str | None = None  # default: the repository's main (or master)
    progress_every_seconds: float = 10.0
    promote: bool = True  # register versions of main and roll them out
    tick_seconds: float = 1.0  # how often rollouts advance and the outbox is delivered
    data_check_seconds: float = 300.0  # how often triggers.dataChange reads its inputs' versions


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """The embedded home's pipeline runner and serving."""

    venv_dir: Path | None = None  # where models' virtualenvs are kept; default: <state_dir>/venvs


@dataclass(frozen=True)
class GitHubSettings:
    """How to reach GitHub: the repository, the API URL and either a token or a GitHub App installation."""

    repository: str
    api_url: str = DEFAULT_GITHUB_API_URL
    token: str | None = field(default=None, repr=False)
    app_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    installation_id: int | None = None
    timeout: int = 15
    poll_seconds: float = 60.0  # how often the API is read for missed deliveries; 0 turns polling off

    def auth(self) -> Auth.Auth:
        """``Auth.Token`` for a token, else the App's installation auth (PyGithub renews its tokens)."""
        from github import Auth

        if self.token:
            return Auth.Token(self.token)
        if self.app_id and self.private_key and self.installation_id is not None:
            return Auth.AppAuth(self.app_id, self.private_key).get_installation_auth(self.installation_id)
        raise SettingsError("GitHub needs a token, or an App id, private key and installation id")

    @property
    def check_mode(self) -> CheckMode:
        """Check runs need a GitHub App; with a plain token the results are commit statuses."""
        return "statuses" if self.token else "check-runs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GitHubSettings:
        """Read ``FLYWHEEL_GITHUB_*``: ``REPOSITORY``, ``API_URL``, ``TOKEN`` or ``APP_ID``,
        ``PRIVATE_KEY`` (or ``PRIVATE_KEY_FILE``) and ``INSTALLATION_ID``, and ``POLL_SECONDS``."""
        env = os.environ if environ is None else environ
        key = env.get("FLYWHEEL_GITHUB_PRIVATE_KEY")
        key_file = env.get("FLYWHEEL_GITHUB_PRIVATE_KEY_FILE")
        if not key and key_file:
            try:
                key = Path(key_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise SettingsError(
                    f"FLYWHEEL_GITHUB_PRIVATE_KEY_FILE: cannot read {key_file}: {why}"
                ) from None
        installation = env.get("FLYWHEEL_GITHUB_INSTALLATION_ID")
        try:
            installation_id = int(installation) if installation else None
        except ValueError:
            raise SettingsError(
                f"FLYWHEEL_GITHUB_INSTALLATION_ID is {installation!r}: give the installation's number"
            ) from None
        poll = _poll_seconds(env.get("FLYWHEEL_GITHUB_POLL_SECONDS") or "60")
        settings = cls(
            repository=env.get("FLYWHEEL_GITHUB_REPOSITORY", ""),
            api_url=env.get("FLYWHEEL_GITHUB_API_URL") or DEFAULT_GITHUB_API_URL,
            token=env.get("FLYWHEEL_GITHUB_TOKEN") or None,
            app_id=env.get("FLYWHEEL_GITHUB_APP_ID") or None,
            private_key=key or None,
            installation_id=installation_id,
            poll_seconds=poll,
        )
        if settings.repository.count("/") != 1:
            raise SettingsError(
                f"FLYWHEEL_GITHUB_REPOSITORY is {settings.repository!r}: give owner/name, e.g. octo/ml-specs"
            )
        _check_credentials(settings)  # refuse incomplete credentials now, not at the first delivery
        return settings


@dataclass(frozen=True, kw_only=True)
class SlackSettings:
    """Slack notifications: the bot token, and a Slack-compatible Web API base URL (tests, proxies)."""

    token: str = field(repr=False)
    api_url: str | None = None  # None: Slack's own

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SlackSettings | None:
        """``FLYWHEEL_SLACK_BOT_TOKEN`` and ``FLYWHEEL_SLACK_API_URL``; None without a token.

        Both are checked whether a token is set or not.
        """
        env = os.environ if environ is None else environ
        token = env.get("FLYWHEEL_SLACK_BOT_TOKEN") or None
        if token is not None and any(char.isspace() for char in token):
            raise SettingsError(
                "FLYWHEEL_SLACK_BOT_TOKEN contains whitespace: "
                "give the bot token (xoxb-...) alone, or unset it"
            )
        api_url = env.get("FLYWHEEL_SLACK_API_URL") or None
        if api_url is not None:
            parts = urlsplit(api_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(
                    f"FLYWHEEL_SLACK_API_URL is {api_url!r}: give an http(s) URL, e.g. https://slack.com/api/"
                )
        return None if token is None else cls(token=token, api_url=api_url)


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook service's: where it listens, the secrets deliveries are signed with, the size limit.

    ``github_secrets`` holds the current secret first, then any still accepted
    during a rotation. ``slack_signing_secret`` is ``None`` when Slack is
    not used. Secrets are left out of ``repr``. The service refuses to start
    with a missing or empty secret rather than accept deliveries it cannot
    verify.
    """

    github_secrets: tuple[str, ...] = field(repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    slack_signing_secret: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    drift_token: str | None = field(default=None, repr=False)  # mounts POST /drift/{model}/{environment}

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
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 8080
    ) -> WebhookSettings:
        """Read the secrets and the size limit from ``environ`` (default :data:`os.environ`).

        ``FLYWHEEL_GITHUB_WEBHOOK_SECRET`` is required;
        ``FLYWHEEL_GITHUB_WEBHOOK_SECRET_PREVIOUS`` is the old secret during a
        rotation; ``FLYWHEEL_SLACK_SIGNING_SECRET``, when set, mounts
        ``POST /hooks/slack/actions`` (set but empty is refused, like the
        GitHub secret); ``FLYWHEEL_WEBHOOK_MAX_BODY_BYTES`` is the largest
        body accepted (default 25 MiB, GitHub's own maximum payload size).
        """
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
        drift_token = env.get(ENV_DRIFT_TOKEN)
        if drift_token is not None and len(drift_token.strip()) < 16:
            raise SettingsError(
                f"{ENV_DRIFT_TOKEN} must be at least 16 characters (a random token the inference loggers "
                "send), or unset to accept no drift events"
            )
        return cls(
            github_secrets=tuple(secrets),
            max_body_bytes=limit,
            slack_signing_secret=slack_secret,
            host=host,
            port=port,
            drift_token=drift_token,
        )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything one controller process is configured with.

    ``github`` is None when GitHub is not the review surface (the local forge
    is), ``slack`` when there are no Slack notifications, ``webhooks`` when the
    process serves no webhooks (``flywheel run``).
    """

    controller: ControllerSettings
    local: LocalSettings = LocalSettings()
    argo: ArgoSettings = field(default_factory=ArgoSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    github: GitHubSettings | None = None
    slack: SlackSettings | None = None
    webhooks: WebhookSettings | None = None
    database_url: str | None = None  # PostgreSQL for every store; None: SQLite in the state directory
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    drift_logger: DriftLoggerSettings = field(default_factory=DriftLoggerSettings)

    @property
    def store_location(self) -> str | Path:
        """What :func:`~controller.backends.store.open_store` opens: the database URL, else the state dir."""
        return self.database_url or self.controller.state_dir


def load_settings(
    controller: ControllerSettings,
    *,
    local: LocalSettings | None = None,
    webhooks: tuple[str, int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of a controller: ``controller`` and ``local`` from the command line, the rest from
    ``environ`` (default :data:`os.environ`). ``webhooks``, the address (host, port) the webhook service
    listens on, turns that service on. Raises :class:`SettingsError` for the first malformed setting."""
    env = os.environ if environ is None else environ
    hooks = None if webhooks is None else WebhookSettings.from_env(env, host=webhooks[0], port=webhooks[1])
    database = database_url(env)
    return Settings(
        controller=controller,
        local=local or LocalSettings(),
        argo=ArgoSettings.from_env(env),
        health=HealthSettings.from_env(env),
        github=GitHubSettings.from_env(env) if env.get("FLYWHEEL_GITHUB_REPOSITORY") else None,
        slack=SlackSettings.from_env(env),
        webhooks=hooks,
        database_url=database,
        leader=LeaderSettings.from_env(env, database_url=database),
        drift_logger=DriftLoggerSettings.from_env(env),
    )


def default_venv_cache(environ: Mapping[str, str] | None = None) -> Path:
    """Where virtualenvs are kept outside a state directory: ``$FLYWHEEL_VENV_CACHE``, else the user cache."""
    env = os.environ if environ is None else environ
    configured = env.get("FLYWHEEL_VENV_CACHE")
    if configured:
        return Path(configured)
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flywheel" / "venvs"


# ---------------------------------------------------------------- checks


def _check_credentials(settings: GitHubSettings) -> None:
    """Raise naming the variables when neither a token nor a whole GitHub App is given, or the key is bad."""
    from github import Auth
    from jwt.exceptions import PyJWTError

    if settings.token:
        return
    app = {
        "FLYWHEEL_GITHUB_APP_ID": settings.app_id,
        "FLYWHEEL_GITHUB_PRIVATE_KEY (or _FILE)": settings.private_key,
        "FLYWHEEL_GITHUB_INSTALLATION_ID": settings.installation_id,
    }
    missing = [name for name, value in app.items() if value is None]
    if len(missing) == len(app):
        raise SettingsError(
            "FLYWHEEL_GITHUB_REPOSITORY is set but no credentials are: set FLYWHEEL_GITHUB_TOKEN, or "
            "FLYWHEEL_GITHUB_APP_ID, FLYWHEEL_GITHUB_PRIVATE_KEY (or _FILE) and "
            "FLYWHEEL_GITHUB_INSTALLATION_ID"
        )
    if missing:
        given = ", ".join(name for name in app if name not in missing)
        raise SettingsError(
            f"a GitHub App needs {' and '.join(missing)} as well (given: {given}); "
            "or set FLYWHEEL_GITHUB_TOKEN instead"
        )
    try:
        Auth.AppAuth(str(settings.app_id), str(settings.private_key)).create_jwt()
    except (PyJWTError, ValueError, TypeError):  # what PyJWT says is about a "public key": use our words
        raise SettingsError(
            "FLYWHEEL_GITHUB_PRIVATE_KEY (or _FILE) is not a PEM private key a GitHub App can sign with"
        ) from None
    settings.auth()


def _poll_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise SettingsError(f"FLYWHEEL_GITHUB_POLL_SECONDS is {text!r}: give seconds, or 0 for no polling")
    return seconds


# ------------------------------------------------------------------ the dashboard


@dataclass(frozen=True)
class UiSettings:
    """Who may read the dashboard and act on it (``flywheel ui``, and ``flywheel serve`` at /ui).

    ``read``: ``open`` or ``signed-in`` (``FLYWHEEL_UI_READ``; ``None``: open on
    a loopback address, signed-in elsewhere). ``trusted_proxies``: the CIDRs
    whose ``user_header`` names the person (``FLYWHEEL_UI_TRUSTED_PROXIES``,
    comma-separated; ``FLYWHEEL_UI_USER_HEADER``, default ``X-Forwarded-User``).
    ``secret`` signs the session cookie (``FLYWHEEL_UI_SECRET``; unset: a key
    made once in the state directory, mode 0600).
    """

    read: Literal["open", "signed-in"] | None = None
    trusted_proxies: tuple[str, ...] = ()
    user_header: str = "X-Forwarded-User"
    secret: str | None = field(default=None, repr=False)


def ui_settings(environ: Mapping[str, str] | None = None) -> UiSettings:
    """The dashboard's settings from the environment; a malformed one raises :class:`SettingsError`."""
    import ipaddress

    env = os.environ if environ is None else environ
    read = env.get("FLYWHEEL_UI_READ") or None
    if read not in (None, "open", "signed-in"):
        raise SettingsError(f"FLYWHEEL_UI_READ is {read!r}: give open or signed-in")
    proxies = tuple(p.strip() for p in env.get("FLYWHEEL_UI_TRUSTED_PROXIES", "").split(",") if p.strip())
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(
                f"FLYWHEEL_UI_TRUSTED_PROXIES: {proxy!r} is not an address or a CIDR"
            ) from None
    header = env.get("FLYWHEEL_UI_USER_HEADER") or "X-Forwarded-User"
    return UiSettings(
        read=read,  # type: ignore[arg-type]  # one of the literals, checked above
        trusted_proxies=proxies,
        user_header=header,
        secret=env.get("FLYWHEEL_UI_SECRET") or None,
    )

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
    The cluster home's image builds: the kubeconfig of the cluster the build
    Jobs run in (unset: the controller pod's in-cluster config) and the
    registry credentials (a ``.dockerconfigjson`` file) the controller asks
    the registry with (:class:`ArgoSettings`).
    The bearer token of an Environment's Argo Server is read from the variable
    or file its spec names, at each use (:func:`argo_token`).
``FLYWHEEL_UI_READ``, ``FLYWHEEL_UI_TRUSTED_PROXIES``, ``FLYWHEEL_UI_USER_HEADER``, ``FLYWHEEL_UI_SECRET``
    Who may read the dashboard and how people prove who they are
    (:class:`UiSettings`, read by ``flywheel ui`` and ``flywheel serve``).
``FLYWHEEL_SERVER``, ``FLYWHEEL_TOKEN``
    A shared Flywheel's dashboard that the decision commands ask, and the API
    token they send (read by those commands: ``--server``).
``FLYWHEEL_HEALTH_PORT``
    The port of the controller's ``GET /healthz`` (0 or unset: none), served
    by ``flywheel run`` and ``flywheel serve`` (:class:`HealthSettings`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from github import Auth

__all__ = [
    "DEFAULT_GITHUB_API_URL",
    "DEFAULT_MAX_BODY_BYTES",
    "ENV_ARGO_ARTIFACTS_DIR",
    "ENV_DATABASE_URL",
    "ENV_HEALTH_PORT",
    "ENV_MAX_BODY_BYTES",
    "ENV_PREVIOUS_SECRET",
    "ENV_SECRET",
    "ENV_SLACK_SIGNING_SECRET",
    "ArgoSettings",
    "CheckMode",
    "ControllerSettings",
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
ENV_ARGO_ARTIFACTS_DIR = "FLYWHEEL_ARGO_ARTIFACTS_DIR"
ENV_KUBECONFIG = "FLYWHEEL_KUBECONFIG"
ENV_REGISTRY_AUTH_FILE = "FLYWHEEL_REGISTRY_AUTH_FILE"
ENV_HEALTH_PORT = "FLYWHEEL_HEALTH_PORT"
ENV_DATABASE_URL = "FLYWHEEL_DATABASE_URL"
ENV_LEADER_ELECTION = "FLYWHEEL_LEADER_ELECTION"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Read by the test suite only (tests/fixtures/required.py): set, a test whose reference data or program is
# missing fails instead of being skipped. CI sets it.
ENV_TEST_REQUIRE_ALL = "FLYWHEEL_TEST_REQUIRE_ALL"

CheckMode = Literal["check-runs", "statuses"]
Election = Literal["none", "lease", "postgres"]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming the variable."""


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


@dataclass(frozen=True, kw_only=True)
class ArgoSettings:
    """The cluster home's pipeline runner (``runner: argo``).

    ``artifacts_dir`` is where this controller sees the artifacts
    PersistentVolumeClaims, claim ``X`` at ``<artifacts_dir>/X``, to bring a
    run's model home; ``None``: each claim at the ``mountPath`` its
    Environment gives, as in a controller pod that mounts the claim where the
    steps do. ``kubeconfig`` is the kubeconfig of the cluster the image build
    Jobs run in (``None``: the in-cluster config of the controller's pod);
    ``registry_auth_file`` a ``.dockerconfigjson`` file with the registries'
    credentials, for asking a registry whether it has a tag (``None``: ask
    without credentials).
    """

    artifacts_dir: Path | None = None
    kubeconfig: Path | None = None
    registry_auth_file: Path | None = None

    def claim_dir(self, claim_name: str, mount_path: str) -> Path:
        """Where the controller reads the claim ``claim_name`` (mounted at ``mount_path`` in the steps)."""
        return self.artifacts_dir / claim_name if self.artifacts_dir is not None else Path(mount_path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ArgoSettings:
        """Read ``FLYWHEEL_ARGO_ARTIFACTS_DIR`` (an absolute directory), ``FLYWHEEL_KUBECONFIG`` and
        ``FLYWHEEL_REGISTRY_AUTH_FILE`` (files), when set."""
        env = os.environ if environ is None else environ
        raw = env.get(ENV_ARGO_ARTIFACTS_DIR) or None
        if raw is not None and not Path(raw).is_absolute():
            raise SettingsError(
                f"{ENV_ARGO_ARTIFACTS_DIR} is {raw!r}: give an absolute directory holding each "
                "artifacts claim by name"
            )
        files: dict[str, Path | None] = {}
        for variable, what in (
            (ENV_KUBECONFIG, "a kubeconfig"),
            (ENV_REGISTRY_AUTH_FILE, "a .dockerconfigjson"),
        ):
            value = env.get(variable) or None
            if value is not None and not Path(value).is_file():
                raise SettingsError(f"{variable} is {value!r}: give {what} file that exists")
            files[variable] = Path(value) if value is not None else None
        return cls(
            artifacts_dir=Path(raw) if raw is not None else None,
            kubeconfig=files[ENV_KUBECONFIG],
            registry_auth_file=files[ENV_REGISTRY_AUTH_FILE],
        )


def argo_token(
    *, variable: str | None, file: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The bearer token for an Argo Server: the ``variable`` or the ``file`` its spec's ``token`` names.

    Read at each call, so a rotated token (a projected service-account token)
    is picked up; ``None`` when the spec names neither. Raises
    :class:`SettingsError` naming the variable or the file when it is unset,
    empty or unreadable.
    """
    env = os.environ if environ is None else environ
    if variable is not None:
        token = env.get(variable, "").strip()
        if not token:
            state = "empty" if variable in env else "not set"
            raise SettingsError(f"{variable} (the Argo Server token of pipeline.argo.token.env) is {state}")
        return token
    if file is not None:
        try:
            token = Path(file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SettingsError(
                f"cannot read {file} (the Argo Server token of pipeline.argo.token.file): {why}"
            ) from None
        if not token:
            raise SettingsError(f"{file} (the Argo Server token of pipeline.argo.token.file) is empty")
        return token
    return None


@dataclass(frozen=True, kw_only=True)
class HealthSettings:
    """The controller's health endpoint: ``GET /healthz`` on ``port`` (0: none), on every interface.

    It answers 200 while the controller's loop has turned within
    ``stale_seconds`` by the controller's clock, 503 otherwise (a Kubernetes
    probe restarts a controller stuck that long).
    """

    port: int = 0
    host: str = "0.0.0.0"
    stale_seconds: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HealthSettings:
        """Read ``FLYWHEEL_HEALTH_PORT``: a port number, or 0 (the default) for no endpoint."""
        env = os.environ if environ is None else environ
        raw = env.get(ENV_HEALTH_PORT, "").strip() or "0"
        try:
            port = int(raw)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise SettingsError(
                f"{ENV_HEALTH_PORT} is {raw!r}: give the port of the controller's /healthz (1-65535), "
                "or 0 for none"
            )
        return cls(port=port)


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
        return cls(
            github_secrets=tuple(secrets),
            max_body_bytes=limit,
            slack_signing_secret=slack_secret,
            host=host,
            port=port,
        )


@dataclass(frozen=True, kw_only=True)
class LeaderSettings:
    """Leader election among controller replicas (``FLYWHEEL_LEADER_ELECTION`` and the ``FLYWHEEL_LEASE_*``).

    ``none`` (the default): this controller is alone (on one machine the state
    directory's lock sees to it). ``lease``: a ``coordination.k8s.io`` Lease
    named ``lease_name`` in ``lease_namespace`` (default: the pod's namespace
    from ``POD_NAMESPACE`` or its service account, else ``default``). ``postgres``: an advisory
    lock in the database of ``FLYWHEEL_DATABASE_URL``. A term lasts
    ``lease_seconds`` and is renewed every third of it. ``identity`` names
    this replica: ``FLYWHEEL_INSTANCE``, else ``POD_NAME`` or ``HOSTNAME`` (a
    pod's name), else the host's name.
    """

    election: Election = "none"
    lease_name: str = "flywheel-controller"
    lease_namespace: str = "default"
    lease_seconds: int = 15
    identity: str | None = None  # None: the machine's host name (:attr:`name`)

    @property
    def name(self) -> str:
        """This replica's name in the election."""
        return self.identity or socket.gethostname()

    @property
    def renew_seconds(self) -> float:
        return self.lease_seconds / 3

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    ) -> LeaderSettings:
        env = os.environ if environ is None else environ
        election = env.get(ENV_LEADER_ELECTION, "").strip() or "none"
        if election not in ("none", "lease", "postgres"):
            raise SettingsError(f"{ENV_LEADER_ELECTION} is {election!r}: give none, lease or postgres")
        if election == "postgres" and database_url is None:
            raise SettingsError(
                f"{ENV_LEADER_ELECTION}=postgres elects the leader in the state database: "
                f"set {ENV_DATABASE_URL}"
            )
        raw = env.get("FLYWHEEL_LEASE_SECONDS", "").strip() or "15"
        if not raw.isdigit() or int(raw) < 3:
            raise SettingsError(f"FLYWHEEL_LEASE_SECONDS is {raw!r}: give whole seconds, 3 or more")
        namespace = env.get("FLYWHEEL_LEASE_NAMESPACE", "").strip() or env.get("POD_NAMESPACE", "").strip()
        if not namespace:
            try:
                namespace = namespace_file.read_text().strip()
            except OSError:
                namespace = ""
        identity = next(
            (env[n].strip() for n in ("FLYWHEEL_INSTANCE", "POD_NAME", "HOSTNAME") if env.get(n)), ""
        )
        return cls(
            election="lease" if election == "lease" else "postgres" if election == "postgres" else "none",
            lease_name=env.get("FLYWHEEL_LEASE_NAME", "").strip() or "flywheel-controller",
            lease_namespace=namespace or "default",
            lease_seconds=int(raw),
            identity=identity or None,
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
    argo: ArgoSettings = ArgoSettings()
    health: HealthSettings = HealthSettings()
    github: GitHubSettings | None = None
    slack: SlackSettings | None = None
    webhooks: WebhookSettings | None = None
    database_url: str | None = None  # PostgreSQL for every store; None: SQLite in the state directory
    leader: LeaderSettings = LeaderSettings()

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
    )


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLYWHEEL_DATABASE_URL`` as an SQLAlchemy URL for psycopg 3; ``None`` when unset (SQLite).

    ``postgresql://`` and ``postgres://`` get psycopg 3's driver. Anything but a
    PostgreSQL URL is refused in one line that never shows the password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    env = os.environ if environ is None else environ
    raw = env.get(ENV_DATABASE_URL, "").strip()
    if not raw:
        return None
    example = "postgresql+psycopg://user:password@host:5432/database"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise SettingsError(f"{ENV_DATABASE_URL} is not a database URL; give one like {example}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        shown = url.render_as_string(hide_password=True)
        raise SettingsError(
            f"{ENV_DATABASE_URL} is {shown}: Flywheel keeps its state in PostgreSQL through psycopg 3; "
            f"give a URL like {example}, or unset it for SQLite in the state directory"
        )
    if not url.database:
        raise SettingsError(
            f"{ENV_DATABASE_URL} ({url.render_as_string(hide_password=True)}) names no database; "
            f"give one like {example}"
        )
    return url.render_as_string(hide_password=False)


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

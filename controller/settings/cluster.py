"""The cluster home's settings: Argo and image builds, the health endpoint, PostgreSQL, leader election.

Read by :func:`controller.settings.load_settings` (and re-exported there),
each from its ``FLYWHEEL_*`` variables; that module's docstring lists them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controller.settings.errors import SettingsError

__all__ = [
    "ENV_ARGO_ARTIFACTS_DIR",
    "ENV_DATABASE_URL",
    "ENV_DRIFT_LOGGER_URL",
    "ENV_HEALTH_PORT",
    "ENV_KUBECONFIG",
    "ENV_LEADER_ELECTION",
    "ENV_REGISTRY_AUTH_FILE",
    "SERVICE_ACCOUNT_NAMESPACE",
    "ArgoSettings",
    "DriftLoggerSettings",
    "Election",
    "HealthSettings",
    "LeaderSettings",
    "argo_token",
    "database_url",
]

ENV_ARGO_ARTIFACTS_DIR = "FLYWHEEL_ARGO_ARTIFACTS_DIR"
ENV_KUBECONFIG = "FLYWHEEL_KUBECONFIG"
ENV_REGISTRY_AUTH_FILE = "FLYWHEEL_REGISTRY_AUTH_FILE"
ENV_HEALTH_PORT = "FLYWHEEL_HEALTH_PORT"
ENV_DATABASE_URL = "FLYWHEEL_DATABASE_URL"
ENV_DRIFT_LOGGER_URL = "FLYWHEEL_DRIFT_LOGGER_URL"
ENV_LEADER_ELECTION = "FLYWHEEL_LEADER_ELECTION"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Election = Literal["none", "lease", "postgres"]


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


@dataclass(frozen=True, kw_only=True)
class DriftLoggerSettings:
    """Drift in the cluster: where KServe's inference loggers reach the webhook service, and its token.

    ``url`` is the webhook service's base URL as the InferenceServices' pods
    reach it (``http://flywheel-webhooks.flywheel.svc:8080``); ``None``: the
    kserve backend gives InferenceServices no logger. ``token`` is the
    service's ``FLYWHEEL_DRIFT_TOKEN``, put in the logger's URL.
    """

    url: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DriftLoggerSettings:
        """Read ``FLYWHEEL_DRIFT_LOGGER_URL`` (an http(s) URL) and ``FLYWHEEL_DRIFT_TOKEN``, when set."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_DRIFT_LOGGER_URL, "").strip() or None
        if url is None:
            return cls()
        if not url.startswith(("http://", "https://")):
            raise SettingsError(
                f"{ENV_DRIFT_LOGGER_URL} is {url!r}: give the webhook service's base URL as the model "
                "servers reach it (http://… or https://…)"
            )
        token = env.get("FLYWHEEL_DRIFT_TOKEN", "").strip()
        if len(token) < 16:
            raise SettingsError(
                f"{ENV_DRIFT_LOGGER_URL} needs FLYWHEEL_DRIFT_TOKEN (at least 16 characters), the token the "
                "webhook service checks on the loggers' events"
            )
        return cls(url=url, token=token)


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
